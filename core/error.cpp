#include "core/error.h"

#include <exception>

namespace shardload {

ErrorKind current_error_kind() {
  try {
    throw;
  } catch (const FormatError&) {
    return ErrorKind::kFormat;
  } catch (const VerdictError&) {
    return ErrorKind::kVerdict;
  } catch (const UsageError&) {
    return ErrorKind::kUsage;
  } catch (const TimeoutError&) {
    return ErrorKind::kTimeout;
  } catch (const CommError&) {
    return ErrorKind::kComm;
  } catch (...) {
    return ErrorKind::kOther;
  }
}

void throw_error(ErrorKind kind, const std::string& message) {
  switch (kind) {
    case ErrorKind::kFormat:
      throw FormatError(message);
    case ErrorKind::kVerdict:
      throw VerdictError(message);
    case ErrorKind::kUsage:
      throw UsageError(message);
    case ErrorKind::kComm:
      throw CommError(message);
    case ErrorKind::kTimeout:
      throw TimeoutError(message, /*reporter=*/false);
    default:
      throw Error(message);
  }
}

void rethrow_with_context(const std::string& context) {
  ErrorKind kind = current_error_kind();
  std::string what;
  try {
    throw;
  } catch (const TimeoutError& e) {
    throw TimeoutError(context + e.what(), e.reporter());
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "unknown error";
  }
  throw_error(kind, context + what);
}

}  // namespace shardload
