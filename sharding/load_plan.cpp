#include "sharding/load_plan.h"

#include <algorithm>
#include <numeric>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "sharding/decompose.h"
#include "sharding/key_table.h"
#include "sharding/rank_loads.h"
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
  bool plannable = false;
};

/// Interns receiving rank sets: one per distinct list of receiving groups, its ranks the sorted
/// union of the groups' members, stored once in the plan.
class RankSets {
 public:
  RankSets(const RankGroups& groups, LoadPlan& plan) : groups_(groups), plan_(plan) {
    plan_.rank_set_at.assign(1, 0);
  }
  /// The set of the ranks of `receivers`' groups.
  int32_t of(std::span<const Receiver> receivers) {
    // Consecutive pieces mostly go to the same groups.
    if (last_ >= 0 && same_groups(last_, receivers)) return last_;
    uint64_t h = receivers.size();
    for (const Receiver& r : receivers) {
      h ^= static_cast<uint64_t>(r.group) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    }
    auto& candidates = by_hash_[h];
    for (int32_t s : candidates) {
      if (same_groups(s, receivers)) return last_ = s;
    }
    const auto s = static_cast<int32_t>(groups_of_set_.size());
    std::vector<int32_t>& g = groups_of_set_.emplace_back();
    const size_t begin = plan_.rank_sets.size();
    for (const Receiver& r : receivers) {
      g.push_back(r.group);
      const auto& m = groups_.members[static_cast<size_t>(r.group)];
      plan_.rank_sets.insert(plan_.rank_sets.end(), m.begin(), m.end());
    }
    std::sort(plan_.rank_sets.begin() + static_cast<std::ptrdiff_t>(begin), plan_.rank_sets.end());
    plan_.rank_set_at.push_back(static_cast<int64_t>(plan_.rank_sets.size()));
    candidates.push_back(s);
    return last_ = s;
  }

 private:
  bool same_groups(int32_t s, std::span<const Receiver> receivers) const {
    const auto& g = groups_of_set_[static_cast<size_t>(s)];
    return std::equal(g.begin(), g.end(), receivers.begin(), receivers.end(),
                      [](int32_t a, const Receiver& b) { return a == b.group; });
  }

  const RankGroups& groups_;
  LoadPlan& plan_;
  std::unordered_map<uint64_t, std::vector<int32_t>> by_hash_;
  std::vector<std::vector<int32_t>> groups_of_set_;
  int32_t last_ = -1;
};

}  // namespace

int32_t LoadPlan::need_of(const Piece& piece, int rank) const {
  if (rank < 0 || static_cast<size_t>(rank) >= group_of.size()) return -1;
  const int32_t g = group_of[static_cast<size_t>(rank)];
  const auto receivers = receivers_of(piece);
  auto it = std::lower_bound(receivers.begin(), receivers.end(), g,
                             [](const Receiver& r, int32_t group) { return r.group < group; });
  return it != receivers.end() && it->group == g ? it->need : -1;
}

LoadPlan plan_load(const std::vector<ChunkRecord>& index, const RankGroups& needs,
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
  LoadPlan plan;
  plan.group_of = needs.group_of;

  // Model keys in model order: rank 0's needs, then keys first seen on rank 1, and so on. Groups
  // are ordered by their first member, and a key's lowest needing rank is the first member of
  // its group, so walking the groups in order gives the same order.
  std::vector<ModelKey> keys;
  std::vector<int32_t> key_of_need;  // flat over (group, need)
  size_t total_needs = 0;
  for (const auto& list : lists) total_needs += list.size();
  key_of_need.reserve(total_needs);
  KeyTable key_id(lists.empty() ? 0 : lists.front().size());
  for (size_t g = 0; g < lists.size(); ++g) {
    const int r = needs.members[g].front();
    for (const Need& n : lists[g]) {
      if (!inside(n.global_shape, n.region)) {
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
      ++keys[static_cast<size_t>(id)].needers_size;
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
    for (size_t c = 0; c < index.size(); ++c) {
      const int32_t id = key_id.find(index[c].key);
      if (id < 0) {
        if (unexpected.try_emplace(index[c].key, 0).second) {
          plan.unexpected_keys.push_back(index[c].key);
        }
        continue;
      }
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
    for (int32_t c : chunks) {
      const ChunkRecord& rec = index[static_cast<size_t>(c)];
      if (rec.offset.size() != stored.global_shape.size() ||
          rec.shape.size() != stored.global_shape.size()) {
        throw FormatError(quoted(rec.key) + ": chunk " + rec.dataset + " has offset " +
                          shape_str(rec.offset) + " and shape " + shape_str(rec.shape) +
                          " for global shape " + shape_str(stored.global_shape));
      }
    }
    const auto needers = needers_of(k);
    std::optional<Sweep> sweep;
    if (needers.size() * chunks.size() > kSweepPairs && !stored.global_shape.empty()) {
      sweep.emplace(chunks.size(), stored.global_shape.size(), [&](size_t i) {
        const ChunkRecord& rec = index[static_cast<size_t>(chunks[i])];
        return std::pair<const Shape&, const Shape&>(rec.offset, rec.shape);
      });
    }
    bool covered = true;
    for (const Receiver& who : needers) {
      const Box& region = need_at(who).region;
      const int64_t want = box_numel(region);
      if (want == 0) continue;
      // Chunks of a validated index are disjoint, so their overlaps with the region add up.
      int64_t have = 0;
      if (sweep) {
        found.clear();
        sweep->candidates(region.offset, region.shape, found);
        for (int32_t i : found) {
          const ChunkRecord& rec = index[static_cast<size_t>(chunks[static_cast<size_t>(i)])];
          have += overlap_numel(rec.offset, rec.shape, region.offset, region.shape);
        }
      } else {
        for (int32_t c : chunks) {
          const ChunkRecord& rec = index[static_cast<size_t>(c)];
          have += overlap_numel(rec.offset, rec.shape, region.offset, region.shape);
        }
      }
      if (have == want) continue;
      covered = false;
      std::vector<Box> boxes;
      for (int32_t c : chunks) {
        boxes.push_back(
            Box{index[static_cast<size_t>(c)].offset, index[static_cast<size_t>(c)].shape});
      }
      plan.uncovered.push_back({k.first->key, needs.members[static_cast<size_t>(who.group)],
                                uncovered_bounds(region, boxes).value_or(region)});
    }
    k.plannable = covered;
  }

  // Pieces, chunk by chunk in index order: the needed part of each chunk cut into boxes with
  // one set of receiving groups each, then into pieces that fit a message.
  std::unordered_map<int32_t, Sweep> needer_sweeps;  // by key, where many groups need it
  std::vector<Receiver> overlapping;
  std::vector<Box> parts;
  std::vector<Receiver> label_receivers;
  // The rank set of each piece (messages are keyed by reader and rank set).
  RankSets sets(needs, plan);
  std::vector<int32_t> set_of_piece;
  plan.pieces.reserve(index.size());
  set_of_piece.reserve(index.size());
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
  for (size_t ci = 0; ci < index.size(); ++ci) {
    if (key_of_chunk[ci] < 0) continue;
    const auto c = static_cast<int32_t>(ci);
    ModelKey& k = keys[static_cast<size_t>(key_of_chunk[ci])];
    if (!k.plannable) continue;
    const ChunkRecord& chunk = index[ci];
    if (numel(chunk.shape) == 0) continue;
    const int64_t elem = dtype_size(chunk.dtype);
    const auto needers = needers_of(k);

    // The needers whose regions overlap the chunk, ascending group; whether each holds it whole.
    overlapping.clear();
    bool all_whole = true;
    auto consider = [&](const Receiver& who) {
      const Box& region = need_at(who).region;
      const int64_t n = overlap_numel(chunk.offset, chunk.shape, region.offset, region.shape);
      if (n == 0) return;
      overlapping.push_back(who);
      all_whole = all_whole && box_inside(chunk.offset, chunk.shape, region.offset, region.shape);
    };
    if (needers.size() * static_cast<size_t>(k.chunks_size) > kSweepPairs && !chunk.shape.empty()) {
      auto it = needer_sweeps.find(key_of_chunk[ci]);
      if (it == needer_sweeps.end()) {
        it = needer_sweeps
                 .try_emplace(key_of_chunk[ci], needers.size(), chunk.shape.size(),
                              [&](size_t i) {
                                const Box& region = need_at(needers[i]).region;
                                return std::pair<const Shape&, const Shape&>(region.offset,
                                                                             region.shape);
                              })
                 .first;
      }
      found.clear();
      it->second.candidates(chunk.offset, chunk.shape, found);
      std::sort(found.begin(), found.end());
      for (int32_t i : found) consider(needers[static_cast<size_t>(i)]);
    } else {
      for (const Receiver& who : needers) consider(who);
    }
    if (overlapping.empty()) continue;

    const Box cbox{chunk.offset, chunk.shape};
    if (all_whole) {
      // Fast path: every receiver holds the whole chunk (a replicated tensor, a shard that lies
      // inside each receiver's region): one box, no grid.
      if (overlapping.size() == needers.size()) {
        if (k.rank_set < 0) k.rank_set = sets.of(needers);
        add_pieces(c, cbox, k.needers_at, k.needers_size, k.rank_set, elem);
      } else {
        add_pieces(c, cbox, append_receivers(overlapping), static_cast<int32_t>(overlapping.size()),
                   -1, elem);
      }
      continue;
    }
    parts.clear();
    for (const Receiver& who : overlapping) {
      parts.push_back(*intersect(cbox, need_at(who).region));
    }
    if (std::all_of(parts.begin(), parts.end(), [&](const Box& b) { return b == parts[0]; })) {
      // Every receiver needs the same part of the chunk.
      add_pieces(c, parts[0], append_receivers(overlapping),
                 static_cast<int32_t>(overlapping.size()), -1, elem);
      continue;
    }
    for (const auto& [box, label] : decompose(cbox, parts)) {
      label_receivers.clear();
      for (int32_t p : label) label_receivers.push_back(overlapping[static_cast<size_t>(p)]);
      add_pieces(c, box, append_receivers(label_receivers),
                 static_cast<int32_t>(label_receivers.size()), -1, elem);
    }
  }
  needer_sweeps.clear();

  // Readers: largest pieces first, each to the receiving rank with the fewest bytes so far (ties
  // to the lower rank), found through one heap per group.
  {
    std::vector<int32_t> order(plan.pieces.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return plan.pieces[static_cast<size_t>(a)].nbytes >
             plan.pieces[static_cast<size_t>(b)].nbytes;
    });
    RankLoads loads(needs);
    for (int32_t p : order) {
      Piece& piece = plan.pieces[static_cast<size_t>(p)];
      const auto receivers = plan.receivers_of(piece);
      int32_t best_group = receivers.front().group;
      std::pair<int64_t, int> best = loads.lightest(best_group);
      for (const Receiver& r : receivers.subspan(1)) {
        if (const auto l = loads.lightest(r.group); l < best) {
          best = l;
          best_group = r.group;
        }
      }
      piece.reader = loads.assign(best_group, piece.nbytes);
    }
    plan.read_bytes = loads.take_bytes();
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

}  // namespace shardload
