// Host staging memory for the transfer: one allocation per load, handed out first in, first out.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <deque>
#include <optional>
#include <utility>

namespace shardload {

/// A ring of staging memory allocated once: a buffer is a contiguous range; allocate() fails
/// (nullopt) until the oldest buffers are released. Buffers are released in allocation order.
/// Not thread-safe (the transfer's driver thread owns it).
class StagingArena {
 public:
  /// `pinned`: page-locked memory (for copies to a GPU); needs a CUDA build and device.
  StagingArena(int64_t capacity, bool pinned);
  char* data() { return static_cast<char*>(memory_.data_ptr()); }
  int64_t capacity() const { return capacity_; }
  /// The offset of a free range of `size` bytes (8-byte aligned), or nullopt when the live
  /// buffers leave no room.
  std::optional<int64_t> allocate(int64_t size);
  /// Releases the oldest live buffer, which must start at `offset`.
  void release(int64_t offset);
  bool empty() const { return live_.empty(); }

 private:
  at::Tensor memory_;
  int64_t capacity_;
  std::deque<std::pair<int64_t, int64_t>> live_;
};

}  // namespace shardload
