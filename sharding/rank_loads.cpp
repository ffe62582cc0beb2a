#include "sharding/rank_loads.h"

#include <algorithm>
#include <functional>

namespace shardload {

RankLoads::RankLoads(const RankGroups& groups)
    : groups_(groups),
      bytes_(static_cast<size_t>(groups.ranks()), 0),
      heaps_(static_cast<size_t>(groups.groups())) {}

std::pair<int64_t, int> RankLoads::lightest(int32_t g) {
  auto& heap = heaps_[static_cast<size_t>(g)];
  if (heap.empty()) {
    // Every member starts with no bytes; ascending ranks already form a min-heap.
    for (int r : groups_.members[static_cast<size_t>(g)]) heap.emplace_back(0, r);
  }
  return heap.front();
}

int RankLoads::assign(int32_t g, int64_t bytes) {
  lightest(g);
  auto& heap = heaps_[static_cast<size_t>(g)];
  std::pop_heap(heap.begin(), heap.end(), std::greater<>());
  auto& top = heap.back();
  top.first += bytes;
  bytes_[static_cast<size_t>(top.second)] = top.first;
  const int rank = top.second;
  std::push_heap(heap.begin(), heap.end(), std::greater<>());
  return rank;
}

}  // namespace shardload
