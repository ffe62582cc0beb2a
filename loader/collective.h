// Collective error handling: every phase ends in a status reduction, so that a failure on any
// rank becomes the same exception on every rank instead of a hang.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "transport/communicator.h"

namespace shardload {

/// Runs phases of a collective operation. Collective: all ranks construct it and call run()
/// with the same phase names in the same order.
class PhaseRunner {
 public:
  PhaseRunner(const Communicator& comm, std::string operation)
      : comm_(comm), operation_(std::move(operation)) {
    comm_.set_operation(operation_);
  }

  /// Names the phase that timeouts of later collectives report. Not collective.
  void enter(const std::string& phase) const { comm_.set_phase(phase); }

  /// Runs `body` on this rank, then reduces the outcome over all ranks. When any rank failed,
  /// every rank throws the same exception (the first failing rank's kind) whose message names
  /// the operation, the phase and each failing rank with its own message. The body must not
  /// issue collectives that other ranks might skip.
  void run(const std::string& phase, const std::function<void()>& body);

  /// The reduction alone, for a phase whose body cannot stop midway (its collectives must run
  /// to the end on every rank): each rank passes what went wrong (kNone when nothing did).
  void reduce(const std::string& phase, ErrorKind kind, const std::string& message);

 private:
  const Communicator& comm_;
  std::string operation_;
};

/// Fault injection for the failure tests: when the environment variable SHARDLOAD_FAIL_AT is
/// "<phase>:<rank>" (e.g. "open:1") and matches, throws an Error; when SHARDLOAD_STOP_AT matches,
/// the process stops itself with SIGSTOP (a rank stuck on a dead filesystem). Free when unset.
void maybe_inject_failure(const std::string& phase, int rank);

}  // namespace shardload
