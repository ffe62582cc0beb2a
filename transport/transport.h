// The data plane: moving tensor bytes from the rank that read them to the ranks that need them.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace shardload {

class Communicator;

/// Where a delivery's buffer lives.
enum class MemoryKind { kHost, kCuda };

/// An in-flight delivery. test() polls it (and drives the backend's progress); wait() blocks.
/// Destroying an unfinished delivery never blocks: it abandons it (after a timeout, when a peer
/// may never come; the buffer must then stay allocated).
class Delivery {
 public:
  virtual ~Delivery() = default;
  /// True when this rank's part of the delivery is done (its buffer may be reused or read).
  /// Throws CommError when the backend reports a failure.
  virtual bool test() = 0;
  /// Blocks until test() would return true.
  virtual void wait() = 0;
};

/// Moves byte buffers between ranks of one communicator.
///
/// Calling contract (as in c10d): every operation is issued by all the ranks it involves in the
/// same order on every rank — shardload issues them in the order of the load plan, which every
/// rank computes identically. Ranks that an operation does not involve do not call it.
class Transport {
 public:
  virtual ~Transport() = default;
  /// "mpi".
  virtual std::string name() const = 0;
  /// Whether this backend moves buffers of the given kind.
  virtual bool supports(MemoryKind kind) const = 0;
  /// Starts delivering `nbytes` from `data` on rank `root` into `data` on every other rank of
  /// `ranks` (ascending, includes root). Called by exactly the ranks in `ranks`. Any size works
  /// (messages over 2 GiB are cut into parts). When `ranks` is every rank, a broadcast.
  virtual std::unique_ptr<Delivery> start(void* data, size_t nbytes, int root,
                                          std::span<const int> ranks) = 0;
  /// Ends every operation in flight without waiting (after a timeout or a peer's failure). What
  /// was left unmatched must never match a later transport's operations (the MPI backend keeps
  /// its communicator, so no later duplicate gets its context). Default: nothing to do.
  virtual void abort() {}

  /// A failure of this rank alone in the middle of a transfer (a device error), told to every
  /// other rank at once so that they stop within a poll instead of at the deadline. Not
  /// collective; never blocks.
  virtual void announce_failure(const std::string& message) = 0;
  /// A failure some rank announced: "rank R: message", or "" when none arrived. Never blocks.
  virtual std::string announced_failure() = 0;
};

/// The MPI backend: always available, host memory. It works on its own duplicate of `comm`, so
/// that its operations never match another transport's. Collective over `comm`.
std::unique_ptr<Transport> make_mpi_transport(const Communicator& comm);

}  // namespace shardload
