#include "sharding/resolve.h"

#include <algorithm>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "sharding/key_table.h"

namespace shardload {
namespace {

using Kind = Declaration::Kind;

std::string quoted(std::string_view key) { return "key '" + std::string(key) + "'"; }

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::kReplicated:
      return "replicated";
    case Kind::kShard:
      return "a shard";
    case Kind::kSplit:
      return "split";
  }
  return "?";
}

void check_extents(const std::string& key, int rank, const Shape& shape, const char* what) {
  for (int64_t e : shape) {
    if (e < 0) {
      throw UsageError(quoted(key) + ": rank " + std::to_string(rank) + " declares " + what + " " +
                       shape_str(shape) + " with a negative extent");
    }
  }
}

/// The absolute members of a canonical split group declared by `rank`: empty = all ranks.
std::vector<int> absolute_group(const std::vector<int>& relative, int rank, int nranks) {
  std::vector<int> out;
  if (relative.empty()) {
    out.resize(static_cast<size_t>(nranks));
    for (int m = 0; m < nranks; ++m) out[static_cast<size_t>(m)] = m;
  } else {
    out.reserve(relative.size());
    for (int delta : relative) out.push_back(static_cast<int>(static_cast<int64_t>(rank) + delta));
  }
  return out;
}

/// What resolution needs to know of one distinct layout.
struct LayoutInfo {
  int first_rank = -1;
  KeyTable where;  ///< key -> declaration index
  /// Distinct non-empty (relative) split groups of the layout, and for each the first
  /// declaration that uses it (for error messages).
  std::vector<const std::vector<int>*> contexts;
  std::vector<int32_t> context_decl;
  bool all_ranks_split = false;  ///< some split is over all ranks
};

/// The checks a rank can make on its own declarations (once per layout, at its first rank).
void check_layout(const std::vector<Declaration>& layout, int rank, int nranks, LayoutInfo& info) {
  info.where = KeyTable(layout.size());
  for (size_t i = 0; i < layout.size(); ++i) {
    if (i + KeyTable::kPrefetchAhead < layout.size())
      info.where.prefetch(layout[i + KeyTable::kPrefetchAhead].key);
    const Declaration& d = layout[i];
    auto who = [&] { return quoted(d.key) + ": rank " + std::to_string(rank); };
    if (!info.where.try_emplace(d.key, static_cast<int32_t>(i)).second) {
      throw UsageError(who() + " declares it twice");
    }
    check_extents(d.key, rank, d.local_shape, "local shape");
    const int64_t ndim = static_cast<int64_t>(d.local_shape.size());
    if (d.kind == Kind::kShard) {
      check_extents(d.key, rank, d.global_shape, "global shape");
      if (static_cast<int64_t>(d.global_shape.size()) != ndim ||
          static_cast<int64_t>(d.offset.size()) != ndim) {
        throw UsageError(who() + " declares a shard with offset " + shape_str(d.offset) +
                         " and local shape " + shape_str(d.local_shape) + " of global shape " +
                         shape_str(d.global_shape) + ": the numbers of dimensions differ");
      }
      const Box box{d.offset, d.local_shape};
      if (!inside(d.global_shape, box)) {
        throw UsageError(who() + " declares shard " + box_str(box) +
                         ", which lies outside global shape " + shape_str(d.global_shape));
      }
    } else if (d.kind == Kind::kSplit) {
      if (d.split_dim < 0 || d.split_dim >= ndim) {
        throw UsageError(who() + " splits it along dimension " + std::to_string(d.split_dim) +
                         ", but its local shape " + shape_str(d.local_shape) + " has " +
                         std::to_string(ndim) + " dimensions");
      }
      if (!d.group.empty()) {
        // (A split over all ranks names every rank once, by construction: nothing to check.)
        const std::vector<int> group = absolute_group(d.group, rank, nranks);
        for (int m : group) {
          if (m < 0 || m >= nranks) {
            throw UsageError(who() + " names rank " + std::to_string(m) + " in its split group " +
                             ranks_str(group) + ", but there are " + std::to_string(nranks) +
                             " ranks");
          }
        }
        std::vector<int> sorted = group;
        std::sort(sorted.begin(), sorted.end());
        if (auto twice = std::adjacent_find(sorted.begin(), sorted.end()); twice != sorted.end()) {
          throw UsageError(who() + " names rank " + std::to_string(*twice) +
                           " twice in its split group " + ranks_str(group));
        }
        if (!std::binary_search(sorted.begin(), sorted.end(), rank)) {
          throw UsageError(who() + " declares a split over ranks " + ranks_str(group) +
                           ", which does not include rank " + std::to_string(rank));
        }
      }
      if (d.group.empty()) {
        info.all_ranks_split = true;
      } else if (std::none_of(info.contexts.begin(), info.contexts.end(),
                              [&](const std::vector<int>* c) { return *c == d.group; })) {
        info.contexts.push_back(&d.group);
        info.context_decl.push_back(static_cast<int32_t>(i));
      }
    }
  }
}

/// Checks that rank m's declaration `o` of a split declared by rank r as `d` over `group` agrees.
void check_member(const Declaration& d, int r, const std::vector<int>& group, const Declaration& o,
                  int m, int nranks) {
  // The words of an error, made only when there is one (this runs per member and tensor).
  auto pair = [&] { return quoted(d.key) + ": rank " + std::to_string(r); };
  auto other = [&] { return "rank " + std::to_string(m); };
  if (o.kind != Kind::kSplit) {
    throw UsageError(pair() + " declares it split, " + other() + " declares it " +
                     kind_name(o.kind));
  }
  if (o.split_dim != d.split_dim) {
    throw UsageError(pair() + " splits it along dimension " + std::to_string(d.split_dim) + ", " +
                     other() + " along dimension " + std::to_string(o.split_dim));
  }
  // Both relative to their ranks: the same members when m + o.group[i] == r + d.group[i].
  const bool same_relative =
      !o.group.empty() && o.group.size() == d.group.size() &&
      std::equal(o.group.begin(), o.group.end(), d.group.begin(), [&](int a, int b) {
        return static_cast<int64_t>(m) + a == static_cast<int64_t>(r) + b;
      });
  if (!(o.group.empty() && d.group.empty()) && !same_relative) {
    // (A split over all ranks passes an empty `group`: its list is not spelled out.)
    const std::vector<int> theirs = absolute_group(o.group, m, nranks);
    if (theirs != group) {
      auto name = [&](const std::vector<int>& g) {
        return g.empty() ? std::string("all ranks") : "ranks " + ranks_str(g);
      };
      throw UsageError(pair() + " splits it over " + name(group) + ", " + other() + " over " +
                       name(o.group.empty() ? std::vector<int>{} : theirs));
    }
  }
  bool same_other_dims = o.local_shape.size() == d.local_shape.size();
  for (size_t k = 0; same_other_dims && k < d.local_shape.size(); ++k) {
    if (static_cast<int64_t>(k) != d.split_dim && o.local_shape[k] != d.local_shape[k]) {
      same_other_dims = false;
    }
  }
  if (!same_other_dims) {
    throw UsageError(pair() + " holds local shape " + shape_str(d.local_shape) + ", " + other() +
                     " holds " + shape_str(o.local_shape) + ": split parts may differ only" +
                     " in dimension " + std::to_string(d.split_dim));
  }
}

struct VectorHash {
  size_t operator()(const std::vector<int32_t>& v) const {
    size_t seed = v.size();
    for (int32_t x : v)
      seed ^= static_cast<size_t>(x) + 0x9e3779b97f4a7c15ull + (seed << 6) + (seed >> 2);
    return seed;
  }
};

}  // namespace

RankGroups resolve_declarations(const DeclaredLayouts& declared, bool symbolic_splits) {
  const int nranks = declared.ranks();
  const auto& layouts = declared.layouts;
  std::vector<LayoutInfo> info(layouts.size());

  // Pass over the ranks: each layout's own checks at its first rank; the ranks a relative split
  // group names, which depend on the rank; and the rank's group. Ranks share a group when they
  // have the same layout and the members of each of their split groups have the same layouts
  // (then every split resolves to the same regions); a split over all ranks gives each rank
  // its own offset, hence its own group.
  RankGroups out;
  out.group_of.resize(static_cast<size_t>(nranks));
  std::vector<int32_t> layout_of_group;
  std::unordered_map<std::vector<int32_t>, int32_t, VectorHash> group_of_key;
  std::vector<int32_t> key;
  for (int r = 0; r < nranks; ++r) {
    const int32_t l = declared.layout_of[static_cast<size_t>(r)];
    if (l < 0 || static_cast<size_t>(l) >= layouts.size()) {
      throw UsageError("resolve_declarations: rank " + std::to_string(r) + " has layout " +
                       std::to_string(l) + " of " + std::to_string(layouts.size()));
    }
    LayoutInfo& li = info[static_cast<size_t>(l)];
    const auto& layout = layouts[static_cast<size_t>(l)];
    if (li.first_rank < 0) {
      li.first_rank = r;
      check_layout(layout, r, nranks, li);
    }
    key.assign(1, l);
    for (size_t c = 0; c < li.contexts.size(); ++c) {
      for (int delta : *li.contexts[c]) {
        const int64_t m = static_cast<int64_t>(r) + delta;
        if (m < 0 || m >= nranks) {
          const Declaration& d = layout[static_cast<size_t>(li.context_decl[c])];
          throw UsageError(quoted(d.key) + ": rank " + std::to_string(r) + " names rank " +
                           std::to_string(m) + " in its split group " +
                           ranks_str(absolute_group(d.group, r, nranks)) + ", but there are " +
                           std::to_string(nranks) + " ranks");
        }
        key.push_back(declared.layout_of[static_cast<size_t>(m)]);
      }
    }
    // A split over all ranks gives each rank its own offset: its own group, unless the offsets
    // are kept symbolic (then ranks with one layout share a group and the split's table).
    if (li.all_ranks_split && !symbolic_splits) key.push_back(r);
    auto [it, fresh] = group_of_key.try_emplace(key, static_cast<int32_t>(out.members.size()));
    if (fresh) {
      out.members.emplace_back();
      layout_of_group.push_back(l);
    }
    out.members[static_cast<size_t>(it->second)].push_back(r);
    out.group_of[static_cast<size_t>(r)] = it->second;
  }

  // Splits over all ranks: every distinct layout's declaration checked and the slab sizes laid
  // out once per key (against the first rank that resolves it), by runs of consecutive ranks
  // with one layout, so a split over thousands of ranks costs its runs, not its ranks.
  std::vector<std::pair<int, int32_t>> layout_runs;  // (first rank, layout)
  for (int r = 0; r < nranks; ++r) {
    const int32_t l = declared.layout_of[static_cast<size_t>(r)];
    if (layout_runs.empty() || layout_runs.back().second != l) layout_runs.emplace_back(r, l);
  }
  std::unordered_map<std::string_view, int32_t> split_of_key;
  std::vector<SplitTable> tables;
  auto split_over_all = [&](const Declaration& d, int r) -> int32_t {
    auto [it, fresh] = split_of_key.try_emplace(d.key, static_cast<int32_t>(tables.size()));
    if (!fresh) return it->second;
    SplitTable& table = tables.emplace_back();
    table.dim = d.split_dim;
    for (size_t run = 0; run < layout_runs.size(); ++run) {
      const auto [m, l] = layout_runs[run];
      const int end = run + 1 < layout_runs.size() ? layout_runs[run + 1].first : nranks;
      const LayoutInfo& li = info[static_cast<size_t>(l)];
      const int32_t w = li.where.find(d.key);
      if (w < 0) {
        throw UsageError(quoted(d.key) + ": rank " + std::to_string(r) + " splits it over ranks " +
                         ranks_str(absolute_group({}, r, nranks)) + ", but rank " +
                         std::to_string(m) + " does not declare it");
      }
      const Declaration& o = layouts[static_cast<size_t>(l)][static_cast<size_t>(w)];
      check_member(d, r, {}, o, m, nranks);
      table.append(end - m, o.local_shape[static_cast<size_t>(d.split_dim)]);
    }
    return it->second;
  };

  // Each group's list, resolved at its first member.
  out.lists.resize(out.members.size());
  for (size_t g = 0; g < out.members.size(); ++g) {
    const int r = out.members[g].front();
    const auto& layout = layouts[static_cast<size_t>(layout_of_group[g])];
    auto& list = out.lists[g];
    list.reserve(layout.size());
    for (const Declaration& d : layout) {
      Holding h{d.key, d.dtype, d.local_shape, full_box(d.local_shape)};
      if (d.kind == Kind::kShard) {
        h.global_shape = d.global_shape;
        h.region = Box{d.offset, d.local_shape};
      } else if (d.kind == Kind::kSplit) {
        const size_t dim = static_cast<size_t>(d.split_dim);
        if (d.group.empty()) {
          const int32_t t = split_over_all(d, r);
          const SplitTable& table = tables[static_cast<size_t>(t)];
          h.global_shape[dim] = table.total;
          if (symbolic_splits) {
            h.split = t;  // offset 0 here: each member's is the table's
          } else {
            h.region.offset[dim] = table.offset_of(r);
          }
        } else {
          const std::vector<int> group = absolute_group(d.group, r, nranks);
          int64_t total = 0;
          for (int m : group) {
            const int32_t l = declared.layout_of[static_cast<size_t>(m)];
            const LayoutInfo& li = info[static_cast<size_t>(l)];
            const int32_t w = li.where.find(d.key);
            if (w < 0) {
              throw UsageError(quoted(d.key) + ": rank " + std::to_string(r) +
                               " splits it over ranks " + ranks_str(group) + ", but rank " +
                               std::to_string(m) + " does not declare it");
            }
            const Declaration& o = layouts[static_cast<size_t>(l)][static_cast<size_t>(w)];
            check_member(d, r, group, o, m, nranks);
            if (m == r) h.region.offset[dim] = total;
            total += o.local_shape[dim];
          }
          h.global_shape[dim] = total;
        }
      }
      list.push_back(std::move(h));
    }
  }

  if (symbolic_splits) out.splits = std::move(tables);

  // Every rank that declares a key must agree on its dtype and global shape (nothing to compare
  // within one group: its list is one rank's).
  if (out.lists.size() > 1) {
    size_t total = 0;
    for (const auto& list : out.lists) total += list.size();
    KeyTable first(total);
    std::vector<std::pair<size_t, size_t>> where;  // first (group, index) of each key
    for (size_t g = 0; g < out.lists.size(); ++g) {
      for (size_t i = 0; i < out.lists[g].size(); ++i) {
        const Holding& h = out.lists[g][i];
        const auto [at, fresh] = first.try_emplace(h.key, static_cast<int32_t>(where.size()));
        if (fresh) {
          where.emplace_back(g, i);
          continue;
        }
        const auto [fg, fi] = where[static_cast<size_t>(at)];
        check_same_tensor(out.lists[fg][fi], out.members[fg].front(), h, out.members[g].front(),
                          "declares");
      }
    }
  }
  return out;
}

}  // namespace shardload
