#include "sharding/load_plan.h"

#include <algorithm>
#include <functional>
#include <numeric>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "sharding/decompose.h"
#include "sharding/key_table.h"
#include "sharding/sweep.h"

namespace shardload {
namespace {

std::string quoted(std::string_view key) { return "key '" + std::string(key) + "'"; }

// ---------------------------------------------------------------------------------------------
// Geometry on (offset, shape) pairs, so that a chunk's box is never copied to be tested.

/// Elements that the boxes (ao, as) and (bo, bs) share (1 for two 0-d boxes).
int64_t overlap_numel(const Shape& ao, const Shape& as, const Shape& bo, const Shape& bs) {
  int64_t n = 1;
  for (size_t d = 0; d < as.size(); ++d) {
    const int64_t lo = std::max(ao[d], bo[d]);
    const int64_t hi = std::min(ao[d] + as[d], bo[d] + bs[d]);
    if (hi <= lo) return 0;
    n *= hi - lo;
  }
  return n;
}

/// True when the box (io, is) lies inside (oo, os).
bool box_inside(const Shape& io, const Shape& is, const Shape& oo, const Shape& os) {
  for (size_t d = 0; d < is.size(); ++d) {
    if (io[d] < oo[d] || io[d] + is[d] > oo[d] + os[d]) return false;
  }
  return true;
}

/// Above this many (needing group, chunk) pairs, a key's matching goes through a Sweep.
constexpr size_t kSweepPairs = 256;

// ---------------------------------------------------------------------------------------------

/// A key some rank needs.
struct ModelKey {
  const Need* first = nullptr;  ///< its first need (model dtype and shape)
  int first_rank = 0;
  int32_t last_group = -1;
  int64_t needers_at = 0;  ///< its (group, need) pairs in plan.receivers, ascending group
  int32_t needers_size = 0;
  int64_t chunks_at = 0;  ///< its chunks in `key_chunks`, index order
  int32_t chunks_size = 0;
  int32_t rank_set = -1;  ///< the rank set of all its needers, once known
  int32_t split = -1;     ///< the SplitTable of its needers that hold it symbolically, or -1
  bool plannable = false;
};

/// Interns receiving rank sets: one per distinct set of ranks (the sorted union of the
/// receivers' groups' members, or the single member a symbolic split's receiver names), stored
/// once in the plan. Two receiver lists with the same ranks (a group of one rank, and that rank
/// as a member of a split) give the same set.
class RankSets {
 public:
  RankSets(const RankGroups& groups, LoadPlan& plan) : groups_(groups), plan_(plan) {
    plan_.rank_set_at.assign(1, 0);
  }
  /// The set of the ranks of `receivers`.
  int32_t of(std::span<const Receiver> receivers) {
    // Consecutive pieces (and keys) mostly go to the same receivers; only who they are matters,
    // not where each lands.
    auto same_ranks = [](const Receiver& a, const Receiver& b) {
      return a.group == b.group && a.rank == b.rank;
    };
    if (last_ >= 0 && std::equal(last_receivers_.begin(), last_receivers_.end(), receivers.begin(),
                                 receivers.end(), same_ranks)) {
      return last_;
    }
    last_receivers_.assign(receivers.begin(), receivers.end());
    scratch_.clear();
    for (const Receiver& r : receivers) {
      if (r.rank >= 0) {
        scratch_.push_back(r.rank);
      } else {
        const auto& m = groups_.members[static_cast<size_t>(r.group)];
        scratch_.insert(scratch_.end(), m.begin(), m.end());
      }
    }
    std::sort(scratch_.begin(), scratch_.end());
    uint64_t h = scratch_.size();
    for (int r : scratch_) {
      h ^= static_cast<uint64_t>(r) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    }
    auto& candidates = by_hash_[h];
    for (int32_t s : candidates) {
      const auto at = static_cast<size_t>(plan_.rank_set_at[static_cast<size_t>(s)]);
      const auto end = static_cast<size_t>(plan_.rank_set_at[static_cast<size_t>(s) + 1]);
      if (std::equal(plan_.rank_sets.begin() + static_cast<std::ptrdiff_t>(at),
                     plan_.rank_sets.begin() + static_cast<std::ptrdiff_t>(end), scratch_.begin(),
                     scratch_.end())) {
        return last_ = s;
      }
    }
    const auto s = static_cast<int32_t>(plan_.rank_set_at.size() - 1);
    plan_.rank_sets.insert(plan_.rank_sets.end(), scratch_.begin(), scratch_.end());
    plan_.rank_set_at.push_back(static_cast<int64_t>(plan_.rank_sets.size()));
    candidates.push_back(s);
    return last_ = s;
  }
  int32_t size() const { return static_cast<int32_t>(plan_.rank_set_at.size() - 1); }

 private:
  const RankGroups& groups_;
  LoadPlan& plan_;
  std::unordered_map<uint64_t, std::vector<int32_t>> by_hash_;
  std::vector<Receiver> last_receivers_;
  std::vector<int> scratch_;
  int32_t last_ = -1;
};

/// plan_load (only_rank < 0) or plan_load_for_rank.
LoadPlan plan(const std::vector<ChunkRecord>& index, const RankGroups& needs, int only_rank,
              const PlanOptions& options);

}  // namespace

int32_t LoadPlan::need_of(const Piece& piece, int rank) const {
  if (rank < 0 || static_cast<size_t>(rank) >= group_of.size()) return -1;
  const int32_t g = group_of[static_cast<size_t>(rank)];
  const auto receivers = receivers_of(piece);
  auto it = std::lower_bound(receivers.begin(), receivers.end(), g,
                             [](const Receiver& r, int32_t group) { return r.group < group; });
  for (; it != receivers.end() && it->group == g; ++it) {
    if (it->rank < 0 || it->rank == rank) return it->need;
  }
  return -1;
}

LoadPlan plan_load(const std::vector<ChunkRecord>& index, const RankGroups& needs,
                   const PlanOptions& options) {
  return plan(index, needs, -1, options);
}

LoadPlan plan_load_for_rank(const std::vector<ChunkRecord>& index, const RankGroups& needs,
                            int rank, const PlanOptions& options) {
  if (rank < 0 || rank >= needs.ranks()) {
    throw UsageError("plan_load_for_rank: rank " + std::to_string(rank) + " of " +
                     std::to_string(needs.ranks()));
  }
  return plan(index, needs, rank, options);
}

namespace {

LoadPlan plan(const std::vector<ChunkRecord>& index, const RankGroups& needs, int only_rank,
              const PlanOptions& options) {
  if (options.message_bytes <= 0) {
    throw UsageError("plan_load: message_bytes must be positive, got " +
                     std::to_string(options.message_bytes));
  }
  check_rank_groups(needs, "plan_load");
  const auto& lists = needs.lists;
  auto need_at = [&](const Receiver& r) -> const Need& {
    return lists[static_cast<size_t>(r.group)][static_cast<size_t>(r.need)];
  };
  for (const SplitTable& t : needs.splits) {
    // Runs back to back from 0 to the total, over every rank.
    bool ok = !t.run_first.empty() && t.run_first.size() == t.run_size.size() &&
              t.run_size.size() == t.run_offset.size() && t.ranks == needs.ranks() && t.dim >= 0;
    int64_t at = 0;
    for (size_t j = 0; ok && j < t.run_first.size(); ++j) {
      const int end = j + 1 < t.run_first.size() ? t.run_first[j + 1] : t.ranks;
      ok = t.run_offset[j] == at && t.run_size[j] >= 0 && t.run_first[j] < end &&
           (j > 0 || t.run_first[0] == 0);
      at += t.run_size[j] * (end - (ok ? t.run_first[j] : 0));
    }
    if (!ok || at != t.total) throw UsageError("plan_load: an invalid split table");
  }
  LoadPlan plan;
  plan.group_of = needs.group_of;
  plan.rank = only_rank;

  // Model keys in model order: rank 0's needs, then keys first seen on rank 1, and so on. Groups
  // are ordered by their first member, and a key's lowest needing rank is the first member of
  // its group, so walking the groups in order gives the same order.
  std::vector<ModelKey> keys;
  keys.reserve(lists.empty() ? 0 : lists.front().size());
  std::vector<int32_t> key_of_need;     // flat over (group, need)
  std::vector<int32_t> my_key_of_need;  // the key of each need of only_rank
  size_t total_needs = 0;
  for (const auto& list : lists) total_needs += list.size();
  key_of_need.reserve(total_needs);
  KeyTable key_id(lists.empty() ? 0 : lists.front().size());
  for (size_t g = 0; g < lists.size(); ++g) {
    const int r = needs.members[g].front();
    for (size_t i = 0; i < lists[g].size(); ++i) {
      if (i + KeyTable::kPrefetchAhead < lists[g].size())
        key_id.prefetch(lists[g][i + KeyTable::kPrefetchAhead].key);
      const Need& n = lists[g][i];
      if (n.split >= 0) {
        if (static_cast<size_t>(n.split) >= needs.splits.size() ||
            needs.splits[static_cast<size_t>(n.split)].ranks != needs.ranks() ||
            needs.splits[static_cast<size_t>(n.split)].total !=
                n.global_shape[static_cast<size_t>(
                    needs.splits[static_cast<size_t>(n.split)].dim)]) {
          throw UsageError(quoted(n.key) + ": rank " + std::to_string(r) +
                           " needs it through an invalid split table");
        }
      } else if (!inside(n.global_shape, n.region)) {
        throw UsageError(quoted(n.key) + ": rank " + std::to_string(r) + " needs region " +
                         box_str(n.region) + ", which lies outside global shape " +
                         shape_str(n.global_shape));
      }
      const auto [id, fresh] = key_id.try_emplace(n.key, static_cast<int32_t>(keys.size()));
      if (fresh) {
        keys.push_back(ModelKey{&n, r, static_cast<int32_t>(g)});
      } else {
        ModelKey& k = keys[static_cast<size_t>(id)];
        if (k.last_group == static_cast<int32_t>(g)) {
          throw UsageError(quoted(n.key) + ": rank " + std::to_string(r) + " needs it twice");
        }
        check_same_tensor(*k.first, k.first_rank, n, r, "needs");
        k.last_group = static_cast<int32_t>(g);
      }
      if (only_rank >= 0 &&
          static_cast<int32_t>(g) == needs.group_of[static_cast<size_t>(only_rank)]) {
        my_key_of_need.push_back(id);
      }
      ModelKey& k = keys[static_cast<size_t>(id)];
      if (n.split >= 0) {
        if (k.split >= 0 && k.split != n.split) {
          throw UsageError(quoted(n.key) + ": rank " + std::to_string(r) +
                           " needs it through another split table than rank " +
                           std::to_string(k.first_rank));
        }
        k.split = n.split;
      }
      ++k.needers_size;
      key_of_need.push_back(id);
    }
  }
  // Needers of each key, back to back: they open plan.receivers, so that a piece every needer
  // receives (a replicated chunk) shares its key's list.
  {
    int64_t at = 0;
    for (ModelKey& k : keys) {
      k.needers_at = at;
      at += k.needers_size;
    }
    plan.receivers.resize(static_cast<size_t>(at));
    std::vector<int64_t> fill(keys.size());
    for (size_t k = 0; k < keys.size(); ++k) fill[k] = keys[k].needers_at;
    size_t flat = 0;
    for (size_t g = 0; g < lists.size(); ++g) {
      for (size_t i = 0; i < lists[g].size(); ++i) {
        const auto k = static_cast<size_t>(key_of_need[flat++]);
        plan.receivers[static_cast<size_t>(fill[k]++)] =
            Receiver{static_cast<int32_t>(g), static_cast<int32_t>(i)};
      }
    }
  }
  key_of_need = {};

  // Index: the key of each chunk; unexpected keys in order of first appearance.
  std::vector<int32_t> key_of_chunk(index.size(), -1);
  std::vector<int32_t> key_chunks;
  {
    KeyTable unexpected;
    // The index usually lists the model's keys in the model's order, each in one or a few
    // chunks: the key of the chunk before, or the key after it, is tried before a hash lookup.
    int32_t last = -1;
    auto known = [&](int32_t id, const std::string& key) {
      return id >= 0 && static_cast<size_t>(id) < keys.size() &&
             keys[static_cast<size_t>(id)].first->key == key;
    };
    for (size_t c = 0; c < index.size(); ++c) {
      const std::string& key = index[c].key;
      const int32_t id = known(last, key)       ? last
                         : known(last + 1, key) ? last + 1
                                                : key_id.find(key);
      if (id < 0) {
        if (unexpected.try_emplace(key, 0).second) plan.unexpected_keys.push_back(key);
        continue;
      }
      last = id;
      key_of_chunk[c] = id;
      ++keys[static_cast<size_t>(id)].chunks_size;
    }
    int64_t at = 0;
    for (ModelKey& k : keys) {
      k.chunks_at = at;
      at += k.chunks_size;
      k.chunks_size = 0;
    }
    key_chunks.resize(static_cast<size_t>(at));
    for (size_t c = 0; c < index.size(); ++c) {
      if (key_of_chunk[c] < 0) continue;
      ModelKey& k = keys[static_cast<size_t>(key_of_chunk[c])];
      key_chunks[static_cast<size_t>(k.chunks_at + k.chunks_size++)] = static_cast<int32_t>(c);
    }
  }
  auto chunks_of = [&](const ModelKey& k) {
    return std::span<const int32_t>(key_chunks)
        .subspan(static_cast<size_t>(k.chunks_at), static_cast<size_t>(k.chunks_size));
  };
  auto needers_of = [&](const ModelKey& k) {
    return std::span<const Receiver>(plan.receivers)
        .subspan(static_cast<size_t>(k.needers_at), static_cast<size_t>(k.needers_size));
  };

  // Verdict inputs, key by key in model order: missing, size mismatch, conversion, coverage.
  std::vector<int32_t> found;
  for (ModelKey& k : keys) {
    const auto chunks = chunks_of(k);
    if (chunks.empty()) {
      plan.missing_keys.push_back(k.first->key);
      continue;
    }
    const ChunkRecord& stored = index[static_cast<size_t>(chunks.front())];
    if (stored.global_shape != k.first->global_shape) {
      plan.size_mismatches.push_back({k.first->key, stored.global_shape, k.first->global_shape});
      continue;
    }
    if (stored.dtype != k.first->dtype) {
      plan.conversions.push_back({k.first->key, stored.dtype, k.first->dtype});
    }
    int64_t stored_elements = 0;
    for (int32_t c : chunks) {
      const ChunkRecord& rec = index[static_cast<size_t>(c)];
      if (rec.offset.size() != stored.global_shape.size() ||
          rec.shape.size() != stored.global_shape.size()) {
        throw FormatError(quoted(rec.key) + ": chunk " + rec.dataset + " has offset " +
                          shape_str(rec.offset) + " and shape " + shape_str(rec.shape) +
                          " for global shape " + shape_str(stored.global_shape));
      }
      stored_elements += numel(rec.shape);
    }
    // Chunks of a validated index are disjoint and inside the tensor: when they hold as many
    // elements as the tensor, they cover every region (no region need be looked at).
    k.plannable = true;
    if (stored_elements == numel(stored.global_shape)) continue;
    const auto needers = needers_of(k);
    std::optional<Sweep> sweep;
    if (!stored.global_shape.empty()) {
      sweep.emplace(chunks.size(), stored.global_shape.size(), [&](size_t i) {
        const ChunkRecord& rec = index[static_cast<size_t>(chunks[i])];
        return std::pair<const Shape&, const Shape&>(rec.offset, rec.shape);
      });
    }
    auto check = [&](const Box& region, std::vector<int> ranks) {
      const int64_t want = box_numel(region);
      if (want == 0) return;
      // Disjoint chunks: their overlaps with the region add up.
      int64_t have = 0;
      found.clear();
      if (sweep) {
        sweep->candidates(region.offset, region.shape, found);
      } else {
        for (size_t i = 0; i < chunks.size(); ++i) found.push_back(static_cast<int32_t>(i));
      }
      for (int32_t i : found) {
        const ChunkRecord& rec = index[static_cast<size_t>(chunks[static_cast<size_t>(i)])];
        have += overlap_numel(rec.offset, rec.shape, region.offset, region.shape);
      }
      if (have == want) return;
      k.plannable = false;
      std::vector<Box> boxes;
      for (int32_t c : chunks) {
        boxes.push_back(
            Box{index[static_cast<size_t>(c)].offset, index[static_cast<size_t>(c)].shape});
      }
      plan.uncovered.push_back(
          {k.first->key, std::move(ranks), uncovered_bounds(region, boxes).value_or(region)});
    };
    for (const Receiver& who : needers) {
      const Need& n = need_at(who);
      if (n.split < 0) {
        check(n.region, needs.members[static_cast<size_t>(who.group)]);
        continue;
      }
      // A symbolic split: each member its own region (a failing load only).
      for (int m : needs.members[static_cast<size_t>(who.group)]) {
        check(needs.region_of(n, m), {m});
      }
    }
  }

  // The chunks to cut: every chunk (the whole plan), or (one rank's share) the chunks that meet
  // the rank's own regions, each with the need it meets, in index order.
  struct Cut {
    int32_t chunk;
    int32_t need;  ///< in the rank's list (its share), or -1 (the whole plan)
  };
  std::vector<Cut> cuts;
  const std::vector<Need>* my_list = only_rank < 0 ? nullptr : &needs.of_rank(only_rank);
  std::vector<Box> my_regions;  // symbolic ones made concrete, per need of the rank
  if (only_rank < 0) {
    cuts.reserve(index.size());
    for (size_t ci = 0; ci < index.size(); ++ci) {
      if (key_of_chunk[ci] < 0 || !keys[static_cast<size_t>(key_of_chunk[ci])].plannable) continue;
      if (numel(index[ci].shape) == 0) continue;
      cuts.push_back(Cut{static_cast<int32_t>(ci), -1});
    }
  } else {
    if (std::any_of(my_list->begin(), my_list->end(), [](const Need& n) { return n.split >= 0; })) {
      my_regions.resize(my_list->size());
    }
    for (size_t i = 0; i < my_list->size(); ++i) {
      const Need& n = (*my_list)[i];
      const ModelKey& k = keys[static_cast<size_t>(my_key_of_need[i])];
      if (!k.plannable) continue;
      if (n.split >= 0) my_regions[i] = needs.region_of(n, only_rank);
      const Box& region = n.split >= 0 ? my_regions[i] : n.region;
      if (box_numel(region) == 0) continue;
      const auto chunks = chunks_of(k);
      auto consider = [&](int32_t c) {
        const ChunkRecord& rec = index[static_cast<size_t>(c)];
        if (overlap_numel(rec.offset, rec.shape, region.offset, region.shape) == 0) return;
        cuts.push_back(Cut{c, static_cast<int32_t>(i)});
      };
      if (chunks.size() > kSweepPairs && !region.shape.empty()) {
        const Sweep sweep(chunks.size(), region.shape.size(), [&](size_t j) {
          const ChunkRecord& rec = index[static_cast<size_t>(chunks[j])];
          return std::pair<const Shape&, const Shape&>(rec.offset, rec.shape);
        });
        found.clear();
        sweep.candidates(region.offset, region.shape, found);
        for (int32_t j : found) consider(chunks[static_cast<size_t>(j)]);
      } else {
        for (int32_t c : chunks) consider(c);
      }
    }
    // Keys in model order mostly hold their chunks in index order already.
    if (!std::is_sorted(cuts.begin(), cuts.end(),
                        [](const Cut& x, const Cut& y) { return x.chunk < y.chunk; })) {
      std::sort(cuts.begin(), cuts.end(),
                [](const Cut& x, const Cut& y) { return x.chunk < y.chunk; });
    }
  }

  // Pieces, cut by cut: the needed part of each box cut into boxes with one set of receivers
  // each (the boxes a rank's share gets are those of the whole plan: decompose's boxes depend
  // only on the region each receiver set covers), then into pieces that fit a message.
  std::unordered_map<int32_t, Sweep> needer_sweeps;  // by key, where many explicit needers
  struct Overlap {
    Receiver who;
    Box region;
  };
  std::vector<Overlap> overlapping;
  std::vector<Box> parts;
  std::vector<Receiver> label_receivers;
  // The rank set of each piece (messages are keyed by reader and rank set).
  RankSets sets(needs, plan);
  std::vector<int32_t> set_of_piece;
  plan.pieces.reserve(cuts.size());
  set_of_piece.reserve(cuts.size());
  auto add_pieces = [&](int32_t c, const Box& box, int64_t receivers_at, int32_t receivers_size,
                        int32_t set, int64_t elem) {
    if (set < 0) {
      set = sets.of(
          std::span<const Receiver>(plan.receivers)
              .subspan(static_cast<size_t>(receivers_at), static_cast<size_t>(receivers_size)));
    }
    if (box_numel(box) * elem <= options.message_bytes || box_numel(box) <= 1) {
      plan.pieces.push_back(Piece{c, box, 0, box_numel(box) * elem, receivers_at, receivers_size});
      set_of_piece.push_back(set);
      return;
    }
    for (Box& piece : split_for_budget(box, elem, options.message_bytes)) {
      const int64_t nbytes = box_numel(piece) * elem;
      plan.pieces.push_back(Piece{c, std::move(piece), 0, nbytes, receivers_at, receivers_size});
      set_of_piece.push_back(set);
    }
  };
  auto append_receivers = [&](const std::vector<Receiver>& list) {
    const auto at = static_cast<int64_t>(plan.receivers.size());
    plan.receivers.insert(plan.receivers.end(), list.begin(), list.end());
    return at;
  };
  for (const Cut& cut : cuts) {
    const int32_t c = cut.chunk;
    const int32_t id = key_of_chunk[static_cast<size_t>(c)];
    ModelKey& k = keys[static_cast<size_t>(id)];
    const ChunkRecord& chunk = index[static_cast<size_t>(c)];
    // The box cut: the chunk, or its part inside the rank's region.
    Box cbox{chunk.offset, chunk.shape};
    if (cut.need >= 0) {
      const Need& mine = (*my_list)[static_cast<size_t>(cut.need)];
      const Box& region = mine.split >= 0 ? my_regions[static_cast<size_t>(cut.need)] : mine.region;
      if (!box_inside(cbox.offset, cbox.shape, region.offset, region.shape)) {
        cbox = *intersect(cbox, region);
      }
    }
    const int64_t elem = dtype_size(chunk.dtype);
    const auto needers = needers_of(k);

    // The receivers whose regions overlap the box, ascending (group, rank); whether each holds
    // it whole.
    overlapping.clear();
    bool all_whole = true;
    auto consider = [&](const Receiver& who, const Box& region) {
      const int64_t n = overlap_numel(cbox.offset, cbox.shape, region.offset, region.shape);
      if (n == 0) return;
      overlapping.push_back(Overlap{who, region});
      all_whole = all_whole && box_inside(cbox.offset, cbox.shape, region.offset, region.shape);
    };
    if (k.split >= 0) {
      // Explicit needers (a split's groups are skipped), then the split's members that meet
      // the box, found in its table.
      for (const Receiver& who : needers) {
        const Need& n = need_at(who);
        if (n.split < 0) {
          consider(who, n.region);
        }
      }
      const SplitTable& t = needs.splits[static_cast<size_t>(k.split)];
      const auto d = static_cast<size_t>(t.dim);
      t.for_each_meeting(
          cbox.offset[d], cbox.offset[d] + cbox.shape[d], [&](int m, int64_t, int64_t) {
            const auto g = needs.group_of[static_cast<size_t>(m)];
            auto it =
                std::lower_bound(needers.begin(), needers.end(), g,
                                 [](const Receiver& r, int32_t group) { return r.group < group; });
            if (it == needers.end() || it->group != g) return;
            const Need& n = need_at(*it);
            if (n.split < 0) return;
            consider(Receiver{g, it->need, m}, needs.region_of(n, m));
          });
      std::sort(overlapping.begin(), overlapping.end(), [](const Overlap& a, const Overlap& b) {
        return a.who.group != b.who.group ? a.who.group < b.who.group : a.who.rank < b.who.rank;
      });
    } else if (needers.size() * static_cast<size_t>(k.chunks_size) > kSweepPairs &&
               !chunk.shape.empty()) {
      auto it = needer_sweeps.find(id);
      if (it == needer_sweeps.end()) {
        it = needer_sweeps
                 .try_emplace(id, needers.size(), chunk.shape.size(),
                              [&](size_t i) {
                                const Box& region = need_at(needers[i]).region;
                                return std::pair<const Shape&, const Shape&>(region.offset,
                                                                             region.shape);
                              })
                 .first;
      }
      found.clear();
      it->second.candidates(cbox.offset, cbox.shape, found);
      std::sort(found.begin(), found.end());
      for (int32_t i : found) {
        consider(needers[static_cast<size_t>(i)], need_at(needers[static_cast<size_t>(i)]).region);
      }
    } else {
      for (const Receiver& who : needers) consider(who, need_at(who).region);
    }
    if (overlapping.empty()) continue;

    label_receivers.clear();
    if (all_whole) {
      // Fast path: every receiver holds the whole box (a replicated tensor, a shard that lies
      // inside each receiver's region): one box, no grid.
      if (k.split < 0 && overlapping.size() == needers.size()) {
        if (k.rank_set < 0) k.rank_set = sets.of(needers);
        add_pieces(c, cbox, k.needers_at, k.needers_size, k.rank_set, elem);
      } else {
        for (const Overlap& o : overlapping) label_receivers.push_back(o.who);
        add_pieces(c, cbox, append_receivers(label_receivers),
                   static_cast<int32_t>(label_receivers.size()), -1, elem);
      }
      continue;
    }
    parts.clear();
    for (const Overlap& o : overlapping) parts.push_back(*intersect(cbox, o.region));
    if (std::all_of(parts.begin(), parts.end(), [&](const Box& b) { return b == parts[0]; })) {
      // Every receiver needs the same part of the box.
      for (const Overlap& o : overlapping) label_receivers.push_back(o.who);
      add_pieces(c, parts[0], append_receivers(label_receivers),
                 static_cast<int32_t>(label_receivers.size()), -1, elem);
      continue;
    }
    for (const auto& [box, label] : decompose(cbox, parts)) {
      label_receivers.clear();
      for (int32_t p : label) label_receivers.push_back(overlapping[static_cast<size_t>(p)].who);
      add_pieces(c, box, append_receivers(label_receivers),
                 static_cast<int32_t>(label_receivers.size()), -1, elem);
    }
  }
  needer_sweeps.clear();

  // Readers, set by set: among the pieces with the same receiving ranks, largest first (ties in
  // piece order), each to the member with the fewest bytes of that set so far (ties to the
  // lower rank). Every member of a set has all of the set's pieces in its share, in this order.
  {
    std::vector<int32_t> order(plan.pieces.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return plan.pieces[static_cast<size_t>(a)].nbytes >
             plan.pieces[static_cast<size_t>(b)].nbytes;
    });
    plan.read_bytes.assign(static_cast<size_t>(needs.ranks()), 0);
    // Per set: a min-heap of (bytes of the set read so far, rank), made when first used.
    std::vector<std::vector<std::pair<int64_t, int>>> heaps(static_cast<size_t>(sets.size()));
    const auto lighter = std::greater<std::pair<int64_t, int>>();
    for (int32_t p : order) {
      Piece& piece = plan.pieces[static_cast<size_t>(p)];
      const auto set = static_cast<size_t>(set_of_piece[static_cast<size_t>(p)]);
      auto& heap = heaps[set];
      if (heap.empty()) {
        const auto at = static_cast<size_t>(plan.rank_set_at[set]);
        const auto end = static_cast<size_t>(plan.rank_set_at[set + 1]);
        for (size_t i = at; i < end; ++i) heap.emplace_back(0, plan.rank_sets[i]);
        std::make_heap(heap.begin(), heap.end(), lighter);
      }
      std::pop_heap(heap.begin(), heap.end(), lighter);
      auto& lightest = heap.back();
      piece.reader = lightest.second;
      lightest.first += piece.nbytes;
      std::push_heap(heap.begin(), heap.end(), lighter);
      plan.read_bytes[static_cast<size_t>(piece.reader)] += piece.nbytes;
    }
  }

  // Messages: pieces with the same reader and receiving ranks, packed in piece order; a message
  // is closed when the next piece would overflow it. Messages run in order of creation.
  {
    std::unordered_map<uint64_t, size_t> open;
    for (size_t p = 0; p < plan.pieces.size(); ++p) {
      const Piece& piece = plan.pieces[p];
      const int32_t set = set_of_piece[p];
      const uint64_t key = (static_cast<uint64_t>(static_cast<uint32_t>(piece.reader)) << 32) |
                           static_cast<uint32_t>(set);
      auto [it, fresh] = open.try_emplace(key, plan.messages.size());
      if (!fresh && aligned_piece_start(plan.messages[it->second].nbytes) + piece.nbytes >
                        options.message_bytes) {
        it->second = plan.messages.size();
        fresh = true;
      }
      if (fresh) plan.messages.push_back(Message{piece.reader, set, {}, 0});
      Message& msg = plan.messages[it->second];
      msg.pieces.push_back(static_cast<int32_t>(p));
      msg.nbytes = aligned_piece_start(msg.nbytes) + piece.nbytes;
    }
  }
  return plan;
}

}  // namespace
}  // namespace shardload
