// The snapshot of an asynchronous save: every tensor of a partition copied into host memory that
// the save then owns, so that the caller may change its tensors (or free them) the moment
// save_async() returns. The memory is a pool of slabs reused across saves (page-locked when
// the process has CUDA, so that device-to-host copies run at full speed).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <mutex>
#include <optional>
#include <vector>

#include "loader/partition.h"

namespace shardload {

/// Host memory for snapshots: slabs, each leased to one save at a time and kept for the next.
/// Thread-safe.
class SnapshotPool {
 public:
  /// A slab of at least `bytes` bytes (page-locked when `pinned`), reusing a free slab that is
  /// large enough; a smaller free slab is freed first when a new one is needed. nullopt when
  /// the slabs in use plus the new one would exceed `limit` bytes.
  std::optional<at::Tensor> lease(int64_t bytes, bool pinned, int64_t limit);
  /// The slab a save has finished with, free for the next one.
  void give_back(const at::Tensor& slab);
  /// Frees every slab not leased (and, for page-locked slabs, LibTorch's cache of them).
  /// Returns the bytes freed.
  int64_t release_unused();
  /// Bytes of all slabs held (leased or free).
  int64_t held_bytes() const;

 private:
  struct Slab {
    at::Tensor bytes;
    bool leased = false;
  };
  mutable std::mutex mutex_;
  std::vector<Slab> slabs_;
};

/// The process's pool.
SnapshotPool& snapshot_pool();

/// Host bytes the snapshot of `partition` takes (each tensor's bytes, 64-byte aligned).
int64_t snapshot_bytes(const Partition& partition);
/// Whether the snapshot of `partition` should be page-locked: it has tensors in device memory
/// and the process has CUDA.
bool wants_pinned_memory(const Partition& partition);

/// A copy of `partition` whose tensors are contiguous copies in `slab` (at least
/// snapshot_bytes(partition) bytes), declared as the originals. CPU tensors are copied with
/// memcpy (contiguous ones) or a strided copy; device tensors on a stream of their device's
/// pool, ordered after the caller's current stream there, and finished before this returns.
/// Throws UsageError naming the key when a tensor's shape changed since it was added.
Partition snapshot_into(const Partition& partition, const at::Tensor& slab);

}  // namespace shardload
