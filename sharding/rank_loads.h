// Balancing work (bytes to read or write) over ranks, one heap per group of ranks.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "sharding/rank_groups.h"

namespace shardload {

/// Bytes assigned to each rank so far, with a min-heap of (bytes, rank) per group, so that the
/// lightest member of a group is found in O(1) and an assignment costs O(log members): choosing
/// among the members of k groups costs O(k + log members), never a scan over their ranks.
class RankLoads {
 public:
  explicit RankLoads(const RankGroups& groups);

  /// (bytes, rank) of the member of group `g` with the fewest bytes, ties to the lower rank.
  std::pair<int64_t, int> lightest(int32_t g);
  /// Assigns `bytes` to the lightest member of group `g`; returns its rank.
  int assign(int32_t g, int64_t bytes);
  /// Bytes per rank.
  const std::vector<int64_t>& bytes() const { return bytes_; }
  std::vector<int64_t> take_bytes() { return std::move(bytes_); }

 private:
  const RankGroups& groups_;
  std::vector<int64_t> bytes_;
  /// heaps_[g]: (bytes, rank) of the members of g, a min-heap; empty until first used.
  std::vector<std::vector<std::pair<int64_t, int>>> heaps_;
};

}  // namespace shardload
