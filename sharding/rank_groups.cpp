#include "sharding/rank_groups.h"

#include <algorithm>
#include <functional>
#include <string_view>
#include <unordered_map>

#include "core/error.h"

namespace shardload {
namespace {

void mix(size_t& seed, size_t v) { seed ^= v + 0x9e3779b97f4a7c15ull + (seed << 6) + (seed >> 2); }
void mix_shape(size_t& seed, const Shape& s) {
  mix(seed, s.size());
  for (int64_t e : s) mix(seed, std::hash<int64_t>{}(e));
}

size_t list_hash(const std::vector<Holding>& list) {
  size_t seed = list.size();
  for (const Holding& h : list) {
    mix(seed, std::hash<std::string_view>{}(h.key));
    mix(seed, static_cast<size_t>(h.dtype));
    mix_shape(seed, h.global_shape);
    mix_shape(seed, h.region.offset);
    mix_shape(seed, h.region.shape);
  }
  return seed;
}

}  // namespace

void SplitTable::append(int ranks_in_run, int64_t size) {
  if (ranks_in_run <= 0) return;
  if (!run_size.empty() && run_size.back() == size) {
    ranks += ranks_in_run;
    total += size * ranks_in_run;
    return;
  }
  run_first.push_back(ranks);
  run_size.push_back(size);
  run_offset.push_back(total);
  ranks += ranks_in_run;
  total += size * ranks_in_run;
}

size_t SplitTable::run_of_rank(int rank) const {
  const auto it = std::upper_bound(run_first.begin(), run_first.end(), rank);
  return static_cast<size_t>(it - run_first.begin()) - 1;
}

size_t SplitTable::run_of_offset(int64_t offset) const {
  const auto it = std::upper_bound(run_offset.begin(), run_offset.end(), offset);
  return it == run_offset.begin() ? 0 : static_cast<size_t>(it - run_offset.begin()) - 1;
}

int64_t SplitTable::offset_of(int rank) const {
  const size_t run = run_of_rank(rank);
  return run_offset[run] + (rank - run_first[run]) * run_size[run];
}

int64_t SplitTable::size_of(int rank) const { return run_size[run_of_rank(rank)]; }

Box RankGroups::region_of(const Holding& h, int rank) const {
  if (h.split < 0) return h.region;
  const SplitTable& t = splits[static_cast<size_t>(h.split)];
  Box b = h.region;
  b.offset[static_cast<size_t>(t.dim)] = t.offset_of(rank);
  b.shape[static_cast<size_t>(t.dim)] = t.size_of(rank);
  return b;
}

std::vector<Holding> RankGroups::concrete_list(int rank) const {
  std::vector<Holding> list = of_rank(rank);
  for (Holding& h : list) {
    if (h.split < 0) continue;
    h.region = region_of(h, rank);
    h.split = -1;
  }
  return list;
}

std::string ranks_str(const std::vector<int>& ranks) {
  std::string s = "[";
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ranks[i]);
  }
  return s + "]";
}

RankGroups RankGroups::one_per_rank(std::vector<std::vector<Holding>> per_rank) {
  RankGroups g;
  g.lists = std::move(per_rank);
  for (size_t r = 0; r < g.lists.size(); ++r) {
    g.members.push_back({static_cast<int>(r)});
    g.group_of.push_back(static_cast<int32_t>(r));
  }
  return g;
}

RankGroups RankGroups::merge_equal(std::vector<std::vector<Holding>> per_rank) {
  RankGroups g;
  // hash -> groups with that hash; the lists themselves decide.
  std::unordered_map<size_t, std::vector<int32_t>> by_hash;
  for (size_t r = 0; r < per_rank.size(); ++r) {
    auto& candidates = by_hash[list_hash(per_rank[r])];
    int32_t found = -1;
    for (int32_t c : candidates) {
      if (g.lists[static_cast<size_t>(c)] == per_rank[r]) found = c;
    }
    if (found < 0) {
      found = static_cast<int32_t>(g.lists.size());
      candidates.push_back(found);
      g.lists.push_back(std::move(per_rank[r]));
      g.members.emplace_back();
    }
    g.members[static_cast<size_t>(found)].push_back(static_cast<int>(r));
    g.group_of.push_back(found);
  }
  return g;
}

void check_rank_groups(const RankGroups& groups, const char* what) {
  auto fail = [&](const std::string& why) {
    throw UsageError(std::string(what) + ": invalid rank groups: " + why);
  };
  if (groups.members.size() != groups.lists.size()) {
    fail(std::to_string(groups.lists.size()) + " lists but " +
         std::to_string(groups.members.size()) + " member lists");
  }
  size_t seen = 0;
  int previous_first = -1;
  for (size_t g = 0; g < groups.members.size(); ++g) {
    const auto& m = groups.members[g];
    if (m.empty()) fail("group " + std::to_string(g) + " has no members");
    if (m.front() <= previous_first) fail("groups are not ordered by their first member");
    previous_first = m.front();
    for (size_t i = 0; i < m.size(); ++i) {
      if (m[i] < 0 || m[i] >= groups.ranks() ||
          groups.group_of[static_cast<size_t>(m[i])] != static_cast<int32_t>(g)) {
        fail("rank " + std::to_string(m[i]) + " of group " + std::to_string(g) +
             " is not mapped to it");
      }
      if (i && m[i - 1] >= m[i]) fail("members of group " + std::to_string(g) + " not ascending");
    }
    seen += m.size();
  }
  if (seen != groups.group_of.size()) {
    fail(std::to_string(groups.group_of.size()) + " ranks but " + std::to_string(seen) +
         " members");
  }
}

}  // namespace shardload
