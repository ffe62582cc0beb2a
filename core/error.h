// The one exception hierarchy of shardload, and the exit code each kind maps to.
#pragma once

#include <stdexcept>
#include <string>

namespace shardload {

/// Base of every error shardload throws. The message carries the context added at each layer
/// ("In ckpt/shard-00001-of-00002.h5: reading key 'w': ...").
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
  /// Process exit code for the command line (DESIGN.md §5).
  virtual int exit_code() const { return 3; }
};

/// Unreadable, corrupt or invalid checkpoint or input file (exit 3).
class FormatError : public Error {
 public:
  using Error::Error;
};

/// A load whose verdict failed: strict mismatch of keys, size mismatch (exit 1).
class VerdictError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 1; }
};

/// Invalid arguments or declarations by the caller: bad partition, bad option (exit 2).
class UsageError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return 2; }
};

/// A failure of MPI, NCCL or CUDA (exit 3).
class CommError : public Error {
 public:
  using Error::Error;
};

/// A rank did not arrive at a phase boundary, or a transfer made no progress, within the
/// operation's timeout (exit 3). The communicator it happened on is unusable afterwards: a rank
/// may be stuck inside a collective, so the job should end (the command line calls MPI_Abort).
class TimeoutError : public CommError {
 public:
  /// `reporter`: this rank holds the census (which ranks did not arrive) and should be the one
  /// that prints the message; the others may wait briefly for it to end the job.
  TimeoutError(const std::string& what, bool reporter) : CommError(what), reporter_(reporter) {}
  bool reporter() const { return reporter_; }

 private:
  bool reporter_ = false;
};

/// Rethrows the exception in flight with `context` put in front of its message, keeping its
/// kind; a non-shardload exception becomes an Error. Call only inside a catch block.
[[noreturn]] void rethrow_with_context(const std::string& context);

/// Kind tags used to carry an error across ranks and rebuild the same exception type.
enum class ErrorKind : int {
  kNone = 0,
  kFormat = 1,
  kVerdict = 2,
  kUsage = 3,
  kComm = 4,
  kOther = 5,
  kTimeout = 6
};

/// The kind of the exception in flight (call inside a catch block).
ErrorKind current_error_kind();

/// Throws an exception of the given kind with the given message.
[[noreturn]] void throw_error(ErrorKind kind, const std::string& message);

}  // namespace shardload
