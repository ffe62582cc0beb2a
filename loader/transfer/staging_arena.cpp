#include "loader/transfer/staging_arena.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.h"

namespace shardload {

std::optional<int64_t> OffsetRing::allocate(int64_t size) {
  size = (std::max<int64_t>(size, 1) + 15) & ~int64_t{15};
  if (size > capacity_) return std::nullopt;
  int64_t start = live_.empty() ? 0 : live_.back().first + live_.back().second;
  if (start + size > capacity_) start = 0;
  for (const auto& [off, len] : live_) {
    if (start < off + len && off < start + size) return std::nullopt;
  }
  live_.emplace_back(start, size);
  used_ += size;
  peak_ = std::max(peak_, used_);
  return start;
}

int64_t OffsetRing::release(int64_t offset) {
  if (live_.empty() || live_.front().first != offset) {
    throw Error("staging ring: buffers must be released in allocation order");
  }
  const int64_t size = live_.front().second;
  live_.pop_front();
  used_ -= size;
  return size;
}

StagingArena::StagingArena(int64_t capacity, bool pinned)
    : memory_(at::empty({std::max<int64_t>(capacity, 16)},
                        at::TensorOptions().dtype(at::kByte).pinned_memory(pinned))),
      ring_(capacity) {}

}  // namespace shardload
