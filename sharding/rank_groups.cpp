#include "sharding/rank_groups.h"

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
