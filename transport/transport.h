// The data plane: moving tensor bytes from the rank that read them to the ranks that need them.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "transport/transport_choice.h"

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
  /// "mpi", "nccl".
  virtual std::string name() const = 0;
  /// Whether this backend moves buffers of the given kind.
  virtual bool supports(MemoryKind kind) const = 0;
  /// Starts delivering `nbytes` from `data` on rank `root` into `data` on every other rank of
  /// `ranks` (ascending, includes root). Called by exactly the ranks in `ranks`. Any size works
  /// (messages over 2 GiB are cut into parts). When `ranks` is every rank, a broadcast.
  /// CUDA memory: the delivery waits for the work already queued on the device's current
  /// stream (a host-to-device copy of the root's bytes) before it reads or writes `data`.
  virtual std::unique_ptr<Delivery> start(void* data, size_t nbytes, int root,
                                          std::span<const int> ranks) = 0;
  /// Starts between group_begin() and group_end() go out together (NCCL reaches its bandwidth
  /// only with several roots in flight). Default: no grouping.
  virtual void group_begin() {}
  virtual void group_end() {}
  /// Ends every operation in flight without waiting (after a timeout or a peer's failure), so
  /// that nothing stays stuck on a device. Default: nothing to do.
  virtual void abort() {}
};

/// The MPI backend: always available, host memory. It works on its own duplicate of `comm`, so
/// that its operations never match another transport's. Collective over `comm`.
std::unique_ptr<Transport> make_mpi_transport(const Communicator& comm);

/// The NCCL backend for CUDA buffers on `device`, for the communicator `comm` was made from:
/// made once per (communicator, device) and reused by later loads (it is aborted when that
/// communicator is freed, or by abort()). Collective over `comm`; every rank must have chosen
/// NCCL (see choose_transport). Throws CommError when the build has no NCCL.
std::shared_ptr<Transport> make_nccl_transport(const Communicator& comm, int device);

/// Whether this build has the NCCL backend.
bool nccl_built();

/// This rank's part of the transport decision (transport_choice.h): the device it would use
/// (`device`, or -1) and that device's machine-wide identity. Not collective.
RankDevice local_device_report(bool wants_cuda, int device, bool mixed_devices);

}  // namespace shardload
