// Ranks grouped by identical holdings (save) or needs (load): what replicas share is stored once.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "sharding/save_plan.h"

namespace shardload {

/// A tensor split along `dim` over all ranks in rank order, stored once for every rank: rank r
/// holds [offset_of(r), offset_of(r) + size_of(r)) along `dim`. Kept as runs of consecutive
/// ranks whose slabs have one size, so it grows with the distinct slab sizes (FSDP's even slabs,
/// a shorter one, empty ones at the tail: three runs), never with ranks.
struct SplitTable {
  int64_t dim = 0;
  int ranks = 0;
  std::vector<int> run_first;       ///< the first rank of each run, ascending; [0] is 0
  std::vector<int64_t> run_size;    ///< the slab size of every rank of the run
  std::vector<int64_t> run_offset;  ///< the offset of the run's first rank; back() + ... = total
  int64_t total = 0;                ///< the split dimension's global size

  /// Appends `ranks_in_run` ranks with slabs of `size` (merged with the last run when equal).
  void append(int ranks_in_run, int64_t size);
  int64_t offset_of(int rank) const;
  int64_t size_of(int rank) const;
  /// Calls fn(rank, offset, size) for each rank whose non-empty slab meets [lo, hi), ascending.
  /// O(log runs + ranks visited).
  template <typename Fn>
  void for_each_meeting(int64_t lo, int64_t hi, Fn&& fn) const {
    if (hi <= lo || run_first.empty()) return;
    size_t run = run_of_offset(lo);
    for (; run < run_first.size(); ++run) {
      const int64_t size = run_size[run];
      const int end_rank = run + 1 < run_first.size() ? run_first[run + 1] : ranks;
      if (run_offset[run] >= hi) break;
      if (size == 0) continue;
      const int64_t skip = lo > run_offset[run] ? (lo - run_offset[run]) / size : 0;
      for (int64_t r = run_first[run] + skip; r < end_rank; ++r) {
        const int64_t offset = run_offset[run] + (r - run_first[run]) * size;
        if (offset >= hi) return;
        fn(static_cast<int>(r), offset, size);
      }
    }
  }
  bool operator==(const SplitTable&) const = default;

 private:
  size_t run_of_rank(int rank) const;
  size_t run_of_offset(int64_t offset) const;  ///< the first run whose slabs end after offset
};

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
  /// Splits over all ranks held symbolically (Holding::split): members of one group then share
  /// a list but not these holdings' offsets. Empty unless resolved with symbolic splits.
  std::vector<SplitTable> splits;

  int ranks() const { return static_cast<int>(group_of.size()); }
  int groups() const { return static_cast<int>(lists.size()); }
  /// The list of rank r.
  const std::vector<Holding>& of_rank(int rank) const {
    return lists[static_cast<size_t>(group_of[static_cast<size_t>(rank)])];
  }

  /// The region `h` (of rank `rank`'s list) stands for on that rank.
  Box region_of(const Holding& h, int rank) const;
  /// Rank r's list with every region made concrete (a copy).
  std::vector<Holding> concrete_list(int rank) const;

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
