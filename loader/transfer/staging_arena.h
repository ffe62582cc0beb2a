// Staging memory for the transfer: rings of buffers handed out first in, first out.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <deque>
#include <optional>
#include <utility>

namespace shardload {

/// Ranges of an OffsetRing start at multiples of this: a cache line. A buffer that a pread fills
/// starts where the file's bytes do within their cache line (shard files keep large chunks
/// 4 KiB-aligned), and the kernel copies into it at full speed: on this project's machines
/// (AMD EPYC) a destination 4-28 bytes past the source's place in a cache line makes the copy
/// four to seven times slower (bench/copy_paths).
constexpr int64_t kRingAlign = 64;

/// Where buffers go in a ring of `capacity` bytes: allocate() hands out contiguous ranges at
/// kRingAlign-aligned offsets, or nullopt until the oldest ranges are released; ranges are released
/// in allocation order. Pure bookkeeping (the memory lives elsewhere: host or device). Not
/// thread-safe.
class OffsetRing {
 public:
  /// `compact`: a range is placed at offset 0 whenever that is free, rather than after the
  /// newest range (the ring then spans about the bytes live at once, not its capacity).
  explicit OffsetRing(int64_t capacity = 0, bool compact = false)
      : capacity_(capacity), compact_(compact) {}
  int64_t capacity() const { return capacity_; }
  std::optional<int64_t> allocate(int64_t size);
  /// Releases the oldest live range, which must start at `offset`; returns its size.
  int64_t release(int64_t offset);
  bool empty() const { return live_.empty(); }
  /// Bytes held by live ranges now, and the most ever held at once.
  int64_t used() const { return used_; }
  int64_t peak() const { return peak_; }

 private:
  int64_t capacity_;
  bool compact_;
  std::deque<std::pair<int64_t, int64_t>> live_;
  int64_t used_ = 0;
  int64_t peak_ = 0;
};

/// Host staging memory allocated once per load, handed out through an OffsetRing.
class StagingArena {
 public:
  /// `pinned`: page-locked memory (for copies to a GPU); needs a CUDA build and device.
  StagingArena(int64_t capacity, bool pinned);
  char* data() { return static_cast<char*>(memory_.data_ptr()); }
  int64_t capacity() const { return ring_.capacity(); }
  std::optional<int64_t> allocate(int64_t size) { return ring_.allocate(size); }
  void release(int64_t offset) { ring_.release(offset); }
  bool empty() const { return ring_.empty(); }
  int64_t peak() const { return ring_.peak(); }

 private:
  at::Tensor memory_;
  OffsetRing ring_;
};

}  // namespace shardload
