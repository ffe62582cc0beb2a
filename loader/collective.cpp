#include "loader/collective.h"

#include <signal.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#include "core/error.h"

namespace shardload {

void PhaseRunner::run(const std::string& phase, const std::function<void()>& body) {
  comm_.set_phase(phase);
  ErrorKind kind = ErrorKind::kNone;
  std::string message;
  try {
    maybe_inject_failure(phase, comm_.rank());
    body();
  } catch (const std::bad_alloc&) {
    kind = ErrorKind::kOther;
    message = "out of memory";
  } catch (const std::exception& e) {
    kind = current_error_kind();
    message = e.what();
  } catch (...) {
    kind = ErrorKind::kOther;
    message = "unknown error";
  }
  reduce(phase, kind, message);
}

void PhaseRunner::reduce(const std::string& phase, ErrorKind kind, const std::string& message) {
  comm_.set_phase(phase);
  // One cheap reduction when all went well; the messages travel only on failure.
  if (comm_.allreduce_max(static_cast<int64_t>(kind)) == 0) return;
  std::string mine;
  if (kind != ErrorKind::kNone) {
    mine.push_back(static_cast<char>(kind));
    mine += message;
  }
  auto all = comm_.allgather(mine);
  ErrorKind first = ErrorKind::kNone;
  std::string text = operation_ + " failed in phase '" + phase + "':";
  // Identical messages from several ranks are reported once, naming all of them.
  std::vector<std::pair<std::string, std::vector<int>>> grouped;
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r].empty()) continue;
    if (first == ErrorKind::kNone) first = static_cast<ErrorKind>(all[r][0]);
    std::string msg = all[r].substr(1);
    auto it =
        std::find_if(grouped.begin(), grouped.end(), [&](const auto& g) { return g.first == msg; });
    if (it == grouped.end()) {
      grouped.push_back({msg, {static_cast<int>(r)}});
    } else {
      it->second.push_back(static_cast<int>(r));
    }
  }
  for (const auto& [msg, ranks] : grouped) {
    text += ranks.size() == 1 ? "\n  rank " : "\n  ranks ";
    for (size_t i = 0; i < ranks.size(); ++i) text += (i ? "," : "") + std::to_string(ranks[i]);
    text += ": " + msg;
  }
  throw_error(first, text);
}

namespace {

/// True when the environment variable `name` is "<phase>:<rank>" for this phase and rank.
bool injection_matches(const char* name, const std::string& phase, int rank) {
  const char* spec = std::getenv(name);
  if (!spec) return false;
  std::string s(spec);
  auto colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  return s.substr(0, colon) == phase && s.substr(colon + 1) == std::to_string(rank);
}

}  // namespace

void maybe_inject_failure(const std::string& phase, int rank) {
  if (injection_matches("SHARDLOAD_STOP_AT", phase, rank)) ::raise(SIGSTOP);
  if (injection_matches("SHARDLOAD_FAIL_AT", phase, rank)) {
    throw Error("injected failure (SHARDLOAD_FAIL_AT=" +
                std::string(std::getenv("SHARDLOAD_FAIL_AT")) + ")");
  }
}

}  // namespace shardload
