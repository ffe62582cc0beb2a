#include "loader/transfer/staging_arena.h"

#include <ATen/ATen.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdint>

#include "core/error.h"

namespace shardload {

std::optional<int64_t> OffsetRing::allocate(int64_t size) {
  size = (std::max<int64_t>(size, 1) + kRingAlign - 1) & ~(kRingAlign - 1);
  if (size > capacity_) return std::nullopt;
  int64_t start = live_.empty() ? 0 : live_.back().first + live_.back().second;
  // Compact: back to the start as soon as the range there is free (the live ranges have not
  // wrapped yet), so that buffers are reused after as few bytes as are live, not after the
  // whole capacity: staging stays in the cache and fewer of its pages are ever touched.
  if (start + size > capacity_ ||
      (compact_ && !live_.empty() && live_.back().first >= live_.front().first &&
       live_.front().first >= size)) {
    start = 0;
  }
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
      ring_(capacity, /*compact=*/true) {
  if (!pinned && capacity >= (int64_t{4} << 20)) {
    // Staging is written once per message and read at once: 2 MiB pages where the kernel
    // grants them (transparent huge pages in madvise mode) fault in 512x fewer times.
    const auto page = static_cast<uintptr_t>(2) << 20;
    const auto begin = (reinterpret_cast<uintptr_t>(data()) + page - 1) & ~(page - 1);
    const auto end =
        (reinterpret_cast<uintptr_t>(data()) + static_cast<uintptr_t>(capacity)) & ~(page - 1);
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
}

}  // namespace shardload
