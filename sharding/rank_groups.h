// Ranks grouped by identical holdings (save) or needs (load): what replicas share is stored once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "sharding/save_plan.h"

namespace shardload {

/// The holdings (save) or needs (load) of every rank, stored once per group of ranks whose lists
/// are identical. Data-parallel replicas form one group, so the size of this grows with the
/// number of distinct layouts times tensors, plus the number of ranks.
///
/// Invariants (checked by check_rank_groups, relied on by the planners): every rank is in exactly
/// one group; each group's members are ascending and non-empty; groups are ordered by their first
/// member. Two groups may hold equal lists (groups need not be maximal).
struct RankGroups {
  /// lists[g]: the holdings or needs of every member of group g, in the members' order.
  std::vector<std::vector<Holding>> lists;
  /// members[g]: the ranks of group g, ascending.
  std::vector<std::vector<int>> members;
  /// group_of[r]: the group of rank r.
  std::vector<int32_t> group_of;

  int ranks() const { return static_cast<int>(group_of.size()); }
  int groups() const { return static_cast<int>(lists.size()); }
  /// The list of rank r.
  const std::vector<Holding>& of_rank(int rank) const {
    return lists[static_cast<size_t>(group_of[static_cast<size_t>(rank)])];
  }

  /// Every rank its own group (the ungrouped picture).
  static RankGroups one_per_rank(std::vector<std::vector<Holding>> per_rank);
  /// Ranks with equal lists merged into one group.
  static RankGroups merge_equal(std::vector<std::vector<Holding>> per_rank);
};

/// "[0, 8, 16]": ranks as error messages show them.
std::string ranks_str(const std::vector<int>& ranks);

/// Throws UsageError when `groups` breaks an invariant of RankGroups (`what` names the caller).
void check_rank_groups(const RankGroups& groups, const char* what);

}  // namespace shardload
