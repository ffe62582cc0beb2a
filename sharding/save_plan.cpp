#include "sharding/save_plan.h"

#include <algorithm>
#include <map>
#include <optional>
#include <unordered_map>
#include <utility>

#include "core/error.h"

namespace shardload {
namespace {

std::string quoted(const std::string& key) { return "key '" + key + "'"; }

std::string ranks_str(const std::vector<int>& ranks) {
  std::string s = "[";
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ranks[i]);
  }
  return s + "]";
}

const char* kind_name(Declaration::Kind kind) {
  switch (kind) {
    case Declaration::Kind::kReplicated:
      return "replicated";
    case Declaration::Kind::kShard:
      return "a shard";
    case Declaration::Kind::kSplit:
      return "split";
  }
  return "?";
}

/// A split group as declared; empty means all ranks in rank order.
std::vector<int> resolved_group(const std::vector<int>& group, int nranks) {
  if (!group.empty()) return group;
  std::vector<int> all(nranks);
  for (int m = 0; m < nranks; ++m) all[m] = m;
  return all;
}

void check_extents(const std::string& key, int rank, const Shape& shape, const char* what) {
  for (int64_t e : shape) {
    if (e < 0) {
      throw UsageError(quoted(key) + ": rank " + std::to_string(rank) + " declares " + what + " " +
                       shape_str(shape) + " with a negative extent");
    }
  }
}

}  // namespace

std::vector<std::vector<Holding>> resolve_declarations(
    const std::vector<std::vector<Declaration>>& declarations) {
  const int nranks = static_cast<int>(declarations.size());
  // where[r][key] = index of the declaration in declarations[r]
  std::vector<std::unordered_map<std::string, size_t>> where(nranks);

  // Checks each rank can make on its own.
  for (int r = 0; r < nranks; ++r) {
    for (size_t i = 0; i < declarations[r].size(); ++i) {
      const Declaration& d = declarations[r][i];
      if (!where[r].emplace(d.key, i).second) {
        throw UsageError(quoted(d.key) + ": rank " + std::to_string(r) + " declares it twice");
      }
      check_extents(d.key, r, d.local_shape, "local shape");
      const std::string who = quoted(d.key) + ": rank " + std::to_string(r);
      const int64_t ndim = static_cast<int64_t>(d.local_shape.size());
      if (d.kind == Declaration::Kind::kShard) {
        check_extents(d.key, r, d.global_shape, "global shape");
        if (static_cast<int64_t>(d.global_shape.size()) != ndim ||
            static_cast<int64_t>(d.offset.size()) != ndim) {
          throw UsageError(who + " declares a shard with offset " + shape_str(d.offset) +
                           " and local shape " + shape_str(d.local_shape) + " of global shape " +
                           shape_str(d.global_shape) + ": the numbers of dimensions differ");
        }
        const Box box{d.offset, d.local_shape};
        if (!inside(d.global_shape, box)) {
          throw UsageError(who + " declares shard " + box_str(box) +
                           ", which lies outside global shape " + shape_str(d.global_shape));
        }
      } else if (d.kind == Declaration::Kind::kSplit) {
        if (d.split_dim < 0 || d.split_dim >= ndim) {
          throw UsageError(who + " splits it along dimension " + std::to_string(d.split_dim) +
                           ", but its local shape " + shape_str(d.local_shape) + " has " +
                           std::to_string(ndim) + " dimensions");
        }
        std::vector<int> seen;
        for (int m : d.group) {
          if (m < 0 || m >= nranks) {
            throw UsageError(who + " names rank " + std::to_string(m) + " in its split group " +
                             ranks_str(d.group) + ", but there are " + std::to_string(nranks) +
                             " ranks");
          }
          if (std::find(seen.begin(), seen.end(), m) != seen.end()) {
            throw UsageError(who + " names rank " + std::to_string(m) +
                             " twice in its split group " + ranks_str(d.group));
          }
          seen.push_back(m);
        }
        if (!d.group.empty() && std::find(d.group.begin(), d.group.end(), r) == d.group.end()) {
          throw UsageError(who + " declares a split over ranks " + ranks_str(d.group) +
                           ", which does not include rank " + std::to_string(r));
        }
      }
    }
  }

  std::vector<std::vector<Holding>> holdings(nranks);
  for (int r = 0; r < nranks; ++r) {
    for (const Declaration& d : declarations[r]) {
      Holding h{d.key, d.dtype, d.local_shape, full_box(d.local_shape)};
      if (d.kind == Declaration::Kind::kShard) {
        h.global_shape = d.global_shape;
        h.region = Box{d.offset, d.local_shape};
      } else if (d.kind == Declaration::Kind::kSplit) {
        const std::vector<int> group = resolved_group(d.group, nranks);
        const size_t dim = static_cast<size_t>(d.split_dim);
        int64_t total = 0;
        for (int m : group) {
          auto it = where[m].find(d.key);
          if (it == where[m].end()) {
            throw UsageError(quoted(d.key) + ": rank " + std::to_string(r) +
                             " splits it over ranks " + ranks_str(group) + ", but rank " +
                             std::to_string(m) + " does not declare it");
          }
          const Declaration& o = declarations[m][it->second];
          const std::string pair = quoted(d.key) + ": rank " + std::to_string(r);
          const std::string other = "rank " + std::to_string(m);
          if (o.kind != Declaration::Kind::kSplit) {
            throw UsageError(pair + " declares it split, " + other + " declares it " +
                             kind_name(o.kind));
          }
          if (o.split_dim != d.split_dim) {
            throw UsageError(pair + " splits it along dimension " + std::to_string(d.split_dim) +
                             ", " + other + " along dimension " + std::to_string(o.split_dim));
          }
          if (resolved_group(o.group, nranks) != group) {
            throw UsageError(pair + " splits it over ranks " + ranks_str(group) + ", " + other +
                             " over ranks " + ranks_str(resolved_group(o.group, nranks)));
          }
          bool same_other_dims = o.local_shape.size() == d.local_shape.size();
          for (size_t k = 0; same_other_dims && k < d.local_shape.size(); ++k) {
            if (k != dim && o.local_shape[k] != d.local_shape[k]) same_other_dims = false;
          }
          if (!same_other_dims) {
            throw UsageError(pair + " holds local shape " + shape_str(d.local_shape) + ", " +
                             other + " holds " + shape_str(o.local_shape) +
                             ": split parts may differ only" + " in dimension " +
                             std::to_string(d.split_dim));
          }
          if (m == r) h.region.offset[dim] = total;
          total += o.local_shape[dim];
        }
        h.global_shape[dim] = total;
      }
      holdings[r].push_back(std::move(h));
    }
  }

  // Every rank that declares a key must agree on its dtype and global shape.
  std::unordered_map<std::string, int> first_rank;
  for (int r = 0; r < nranks; ++r) {
    for (size_t i = 0; i < holdings[r].size(); ++i) {
      const Holding& h = holdings[r][i];
      auto [it, fresh] = first_rank.emplace(h.key, r);
      if (fresh) continue;
      const int f = it->second;
      check_same_tensor(holdings[f][where[f].at(h.key)], f, h, r, "declares");
    }
  }
  return holdings;
}

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

SavePlan plan_save(const std::vector<std::vector<Holding>>& holdings) {
  const int nranks = static_cast<int>(holdings.size());

  // A distinct region of a key and the (rank, holding index) pairs that hold it, ascending rank.
  struct Region {
    Box box;
    std::vector<std::pair<int, int32_t>> holders;
    int64_t nbytes = 0;
  };
  struct Key {
    std::string name;
    const Holding* first = nullptr;
    int first_rank = 0;
    std::vector<Region> regions;  // in order of first appearance
  };
  std::vector<Key> keys;
  std::unordered_map<std::string, size_t> key_index;

  for (int r = 0; r < nranks; ++r) {
    std::unordered_map<std::string, bool> seen_here;
    for (size_t i = 0; i < holdings[r].size(); ++i) {
      const Holding& h = holdings[r][i];
      const std::string who = quoted(h.key) + ": rank " + std::to_string(r);
      if (!seen_here.emplace(h.key, true).second) throw UsageError(who + " holds it twice");
      if (!inside(h.global_shape, h.region)) {
        throw UsageError(who + " holds region " + box_str(h.region) +
                         ", which lies outside global shape " + shape_str(h.global_shape));
      }
      auto [it, fresh] = key_index.emplace(h.key, keys.size());
      if (fresh) keys.push_back(Key{h.key, &h, r, {}});
      Key& k = keys[it->second];
      if (!fresh) check_same_tensor(*k.first, k.first_rank, h, r, "holds");
      auto reg = std::find_if(k.regions.begin(), k.regions.end(),
                              [&](const Region& g) { return g.box == h.region; });
      if (reg == k.regions.end()) {
        k.regions.push_back(Region{h.region, {}, box_numel(h.region) * dtype_size(h.dtype)});
        reg = k.regions.end() - 1;
      }
      reg->holders.emplace_back(r, static_cast<int32_t>(i));
    }
  }

  // Which regions get written: distinct non-empty regions must tile the tensor exactly; a
  // zero-size tensor is still written once (its full box when some rank holds it).
  std::vector<const Region*> to_write;
  for (const Key& k : keys) {
    const Shape& global = k.first->global_shape;
    std::vector<Box> boxes;
    int64_t covered = 0;
    for (const Region& g : k.regions) {
      if (box_numel(g.box) == 0) continue;
      for (const Region& o : k.regions) {
        if (&o == &g) break;
        if (intersect(o.box, g.box)) {
          throw UsageError(quoted(k.name) + ": region " + box_str(o.box) + " on rank " +
                           std::to_string(o.holders.front().first) + " overlaps region " +
                           box_str(g.box) + " on rank " + std::to_string(g.holders.front().first));
        }
      }
      boxes.push_back(g.box);
      covered += box_numel(g.box);
      to_write.push_back(&g);
    }
    if (numel(global) == 0) {
      auto full = std::find_if(k.regions.begin(), k.regions.end(),
                               [&](const Region& g) { return g.box == full_box(global); });
      to_write.push_back(full != k.regions.end() ? &*full : &k.regions.front());
    } else if (covered != numel(global)) {
      std::vector<int> ranks;
      for (const Region& g : k.regions) {
        for (const auto& [r, i] : g.holders) ranks.push_back(r);
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
  plan.writes.resize(nranks);
  plan.bytes_per_rank.assign(nranks, 0);
  for (const Region* g : to_write) {
    std::pair<int, int32_t> best = g->holders.front();
    for (const auto& h : g->holders) {
      if (plan.bytes_per_rank[h.first] < plan.bytes_per_rank[best.first]) best = h;
    }
    plan.writes[best.first].push_back(best.second);
    plan.bytes_per_rank[best.first] += g->nbytes;
  }
  for (auto& w : plan.writes) std::sort(w.begin(), w.end());
  return plan;
}

}  // namespace shardload
