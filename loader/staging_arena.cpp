#include "loader/staging_arena.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace shardload {

StagingArena::StagingArena(int64_t capacity, bool pinned)
    : memory_(at::empty({std::max<int64_t>(capacity, 1)},
                        at::TensorOptions().dtype(at::kByte).pinned_memory(pinned))),
      capacity_(capacity) {}

std::optional<int64_t> StagingArena::allocate(int64_t size) {
  size = (size + 7) & ~int64_t{7};
  if (size > capacity_) return std::nullopt;
  int64_t start = live_.empty() ? 0 : live_.back().first + live_.back().second;
  if (start + size > capacity_) start = 0;
  for (const auto& [off, len] : live_) {
    if (start < off + len && off < start + size) return std::nullopt;
  }
  live_.emplace_back(start, size);
  return start;
}

void StagingArena::release(int64_t offset) {
  if (live_.empty() || live_.front().first != offset) {
    throw Error("staging arena: buffers must be released in allocation order");
  }
  live_.pop_front();
}

}  // namespace shardload
