#include "sharding/save_plan.h"

#include <algorithm>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "sharding/rank_groups.h"
#include "sharding/rank_loads.h"

namespace shardload {
namespace {

std::string quoted(std::string_view key) { return "key '" + std::string(key) + "'"; }

template <typename Region>
int first_member(const RankGroups& groups, const Region& region) {
  return groups.members[static_cast<size_t>(region.holders.front().group)].front();
}

}  // namespace

void check_same_tensor(const Holding& a, int ra, const Holding& b, int rb,
                       const std::string& verb) {
  const std::string pair = quoted(a.key) + ": rank " + std::to_string(ra) + " " + verb + " ";
  const std::string other = ", rank " + std::to_string(rb) + " " + verb + " ";
  if (a.dtype != b.dtype) {
    throw UsageError(pair + "dtype " + std::string(dtype_name(a.dtype)) + other +
                     std::string(dtype_name(b.dtype)));
  }
  if (a.global_shape != b.global_shape) {
    throw UsageError(pair + "global shape " + shape_str(a.global_shape) + other +
                     shape_str(b.global_shape));
  }
}

SavePlan plan_save(const RankGroups& holdings) {
  if (!holdings.splits.empty()) {
    throw UsageError("plan_save: holdings with symbolic splits (resolve them per rank)");
  }
  check_rank_groups(holdings, "plan_save");

  // A distinct region of a key and the (group, holding index) pairs that hold it, ascending group.
  struct Holder {
    int32_t group;
    int32_t index;
  };
  struct Region {
    Box box;
    std::vector<Holder> holders;
    int64_t nbytes = 0;
  };
  struct Key {
    std::string_view name;
    const Holding* first = nullptr;
    int first_rank = 0;
    int32_t last_group = 0;       // the last group seen holding it
    std::vector<Region> regions;  // in order of first appearance
  };
  std::vector<Key> keys;
  std::unordered_map<std::string_view, size_t> key_index;

  for (int32_t g = 0; g < holdings.groups(); ++g) {
    const auto& list = holdings.lists[static_cast<size_t>(g)];
    const int r = holdings.members[static_cast<size_t>(g)].front();
    for (size_t i = 0; i < list.size(); ++i) {
      const Holding& h = list[i];
      const std::string who = quoted(h.key) + ": rank " + std::to_string(r);
      if (!inside(h.global_shape, h.region)) {
        throw UsageError(who + " holds region " + box_str(h.region) +
                         ", which lies outside global shape " + shape_str(h.global_shape));
      }
      auto [it, fresh] = key_index.emplace(h.key, keys.size());
      if (fresh) keys.push_back(Key{h.key, &h, r, g, {}});
      Key& k = keys[it->second];
      if (!fresh) {
        if (k.last_group == g) throw UsageError(who + " holds it twice");
        k.last_group = g;
        check_same_tensor(*k.first, k.first_rank, h, r, "holds");
      }
      auto reg = std::find_if(k.regions.begin(), k.regions.end(),
                              [&](const Region& x) { return x.box == h.region; });
      if (reg == k.regions.end()) {
        k.regions.push_back(Region{h.region, {}, box_numel(h.region) * dtype_size(h.dtype)});
        reg = k.regions.end() - 1;
      }
      reg->holders.push_back(Holder{g, static_cast<int32_t>(i)});
    }
  }

  // Which regions get written: distinct non-empty regions must tile the tensor exactly; a
  // zero-size tensor is still written once (its full box when some rank holds it).
  std::vector<const Region*> to_write;
  for (const Key& k : keys) {
    const Shape& global = k.first->global_shape;
    std::vector<Box> boxes;
    int64_t covered = 0;
    for (const Region& x : k.regions) {
      if (box_numel(x.box) == 0) continue;
      for (const Region& o : k.regions) {
        if (&o == &x) break;
        if (intersect(o.box, x.box)) {
          throw UsageError(quoted(k.name) + ": region " + box_str(o.box) + " on rank " +
                           std::to_string(first_member(holdings, o)) + " overlaps region " +
                           box_str(x.box) + " on rank " +
                           std::to_string(first_member(holdings, x)));
        }
      }
      boxes.push_back(x.box);
      covered += box_numel(x.box);
      to_write.push_back(&x);
    }
    if (numel(global) == 0) {
      auto full = std::find_if(k.regions.begin(), k.regions.end(),
                               [&](const Region& x) { return x.box == full_box(global); });
      to_write.push_back(full != k.regions.end() ? &*full : &k.regions.front());
    } else if (covered != numel(global)) {
      std::vector<int> ranks;
      for (const Region& x : k.regions) {
        for (const Holder& h : x.holders) {
          const auto& m = holdings.members[static_cast<size_t>(h.group)];
          ranks.insert(ranks.end(), m.begin(), m.end());
        }
      }
      std::sort(ranks.begin(), ranks.end());
      ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
      const std::optional<Box> gap = uncovered_bounds(full_box(global), boxes);
      throw UsageError(quoted(k.name) + ": the regions held by ranks " + ranks_str(ranks) +
                       " leave " + box_str(gap.value_or(full_box(global))) + " of global shape " +
                       shape_str(global) + " uncovered");
    }
  }

  std::stable_sort(to_write.begin(), to_write.end(),
                   [](const Region* a, const Region* b) { return a->nbytes > b->nbytes; });
  SavePlan plan;
  plan.writes.resize(static_cast<size_t>(holdings.ranks()));
  RankLoads loads(holdings);
  for (const Region* x : to_write) {
    // The holder group whose lightest member is lightest; the member writes its holding.
    const Holder* best = &x->holders.front();
    std::pair<int64_t, int> lightest = loads.lightest(best->group);
    for (const Holder& h : x->holders) {
      if (const auto l = loads.lightest(h.group); l < lightest) {
        lightest = l;
        best = &h;
      }
    }
    const int rank = loads.assign(best->group, x->nbytes);
    plan.writes[static_cast<size_t>(rank)].push_back(best->index);
  }
  for (auto& w : plan.writes) std::sort(w.begin(), w.end());
  plan.bytes_per_rank = loads.take_bytes();
  return plan;
}

}  // namespace shardload
