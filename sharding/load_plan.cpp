#include "sharding/load_plan.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"

namespace shardload {
namespace {

std::string quoted(const std::string& key) { return "key '" + key + "'"; }

Box chunk_box(const ChunkRecord& c) { return Box{c.offset, c.shape}; }

/// Per dimension, the sorted distinct boundaries of `region` and of every box in `parts` (which
/// must lie inside it).
std::vector<std::vector<int64_t>> grid_cuts(const Box& region, const std::vector<Box>& parts) {
  std::vector<std::vector<int64_t>> cuts(region.shape.size());
  for (size_t d = 0; d < cuts.size(); ++d) {
    cuts[d] = {region.offset[d], region.offset[d] + region.shape[d]};
    for (const Box& p : parts) {
      cuts[d].push_back(p.offset[d]);
      cuts[d].push_back(p.offset[d] + p.shape[d]);
    }
    std::sort(cuts[d].begin(), cuts[d].end());
    cuts[d].erase(std::unique(cuts[d].begin(), cuts[d].end()), cuts[d].end());
  }
  return cuts;
}

/// Calls `visit(cell index, cell box)` for every cell of the grid, in C order. No cell when a
/// dimension has no interval; one cell for 0-d.
template <typename Visit>
void for_each_cell(const std::vector<std::vector<int64_t>>& cuts, Visit&& visit) {
  const size_t ndim = cuts.size();
  for (const auto& c : cuts) {
    if (c.size() < 2) return;
  }
  std::vector<int64_t> at(ndim, 0);
  Box cell{Shape(ndim), Shape(ndim)};
  while (true) {
    for (size_t d = 0; d < ndim; ++d) {
      cell.offset[d] = cuts[d][at[d]];
      cell.shape[d] = cuts[d][at[d] + 1] - cuts[d][at[d]];
    }
    visit(at, cell);
    size_t d = ndim;
    while (d > 0 && static_cast<size_t>(++at[d - 1] + 1) >= cuts[d - 1].size()) at[--d] = 0;
    if (d == 0) return;
  }
}

/// A box in grid-index space (half-open per dimension) and the set of parts it lies in.
struct GridBox {
  int label = 0;
  std::vector<int64_t> lo, hi;
};

/// Merges boxes that are adjacent along `dim` and agree on the label and on every other
/// dimension. Applied innermost dimension first, it turns the grid's cells back into few boxes.
std::vector<GridBox> merge_along(std::vector<GridBox> boxes, size_t dim) {
  // Sorting by (label, other dims, lo[dim]) puts mergeable boxes next to each other.
  auto other_key = [dim](const GridBox& b) {
    std::vector<int64_t> k{b.label};
    for (size_t d = 0; d < b.lo.size(); ++d) {
      if (d == dim) continue;
      k.push_back(b.lo[d]);
      k.push_back(b.hi[d]);
    }
    return k;
  };
  std::vector<std::pair<std::vector<int64_t>, GridBox>> keyed;
  keyed.reserve(boxes.size());
  for (auto& b : boxes) keyed.emplace_back(other_key(b), std::move(b));
  std::sort(keyed.begin(), keyed.end(), [dim](const auto& a, const auto& b) {
    if (a.first != b.first) return a.first < b.first;
    return a.second.lo[dim] < b.second.lo[dim];
  });
  std::vector<GridBox> out;
  for (size_t i = 0; i < keyed.size(); ++i) {
    if (!out.empty() && i > 0 && keyed[i - 1].first == keyed[i].first &&
        out.back().hi[dim] == keyed[i].second.lo[dim]) {
      out.back().hi[dim] = keyed[i].second.hi[dim];
    } else {
      out.push_back(std::move(keyed[i].second));
    }
  }
  return out;
}

/// Cuts the union of `parts` (boxes inside one chunk) into disjoint boxes, each labelled with
/// the ascending indices of the parts that contain it, in C order of their first elements.
std::vector<std::pair<Box, std::vector<int>>> decompose(const Box& chunk,
                                                        const std::vector<Box>& parts) {
  const auto cuts = grid_cuts(chunk, parts);
  std::map<std::vector<int>, int> label_of;
  std::vector<const std::vector<int>*> labels;
  std::vector<GridBox> cells;
  for_each_cell(cuts, [&](const std::vector<int64_t>& at, const Box& cell) {
    std::vector<int> in;
    for (size_t p = 0; p < parts.size(); ++p) {
      if (contains(parts[p], cell)) in.push_back(static_cast<int>(p));
    }
    if (in.empty()) return;
    auto [it, fresh] = label_of.emplace(std::move(in), static_cast<int>(labels.size()));
    if (fresh) labels.push_back(&it->first);
    GridBox b{it->second, at, at};
    for (auto& h : b.hi) ++h;
    cells.push_back(std::move(b));
  });
  for (size_t d = cuts.size(); d-- > 0;) cells = merge_along(std::move(cells), d);
  std::sort(cells.begin(), cells.end(),
            [](const GridBox& a, const GridBox& b) { return a.lo < b.lo; });

  std::vector<std::pair<Box, std::vector<int>>> out;
  for (const GridBox& b : cells) {
    Box box{Shape(cuts.size()), Shape(cuts.size())};
    for (size_t d = 0; d < cuts.size(); ++d) {
      box.offset[d] = cuts[d][b.lo[d]];
      box.shape[d] = cuts[d][b.hi[d]] - cuts[d][b.lo[d]];
    }
    out.emplace_back(std::move(box), *labels[b.label]);
  }
  return out;
}

/// A key some rank needs: its first declaration and every (rank, need index), ascending rank.
struct ModelKey {
  const Need* first = nullptr;
  int first_rank = 0;
  std::vector<std::pair<int, int32_t>> needers;
};

}  // namespace

int32_t LoadPlan::need_of(const Piece& piece, int rank) const {
  auto it = std::lower_bound(piece.receivers.begin(), piece.receivers.end(), rank,
                             [](const std::pair<int, int32_t>& e, int r) { return e.first < r; });
  return it != piece.receivers.end() && it->first == rank ? it->second : -1;
}

LoadPlan plan_load(const std::vector<ChunkRecord>& index,
                   const std::vector<std::vector<Need>>& needs, const PlanOptions& options) {
  if (options.message_bytes <= 0) {
    throw UsageError("plan_load: message_bytes must be positive, got " +
                     std::to_string(options.message_bytes));
  }
  const int nranks = static_cast<int>(needs.size());

  // Index keys in order of first appearance, with their chunks.
  std::vector<std::string> index_keys;
  std::unordered_map<std::string, std::vector<int32_t>> chunks_of;
  for (size_t i = 0; i < index.size(); ++i) {
    auto [it, fresh] = chunks_of.try_emplace(index[i].key);
    if (fresh) index_keys.push_back(index[i].key);
    it->second.push_back(static_cast<int32_t>(i));
  }

  // Model keys in model order: rank 0's needs, then keys first seen on rank 1, and so on.
  std::vector<std::string> model_keys;
  std::unordered_map<std::string, ModelKey> model;
  for (int r = 0; r < nranks; ++r) {
    for (size_t i = 0; i < needs[r].size(); ++i) {
      const Need& n = needs[r][i];
      const std::string who = quoted(n.key) + ": rank " + std::to_string(r);
      if (!inside(n.global_shape, n.region)) {
        throw UsageError(who + " needs region " + box_str(n.region) +
                         ", which lies outside global shape " + shape_str(n.global_shape));
      }
      auto [it, fresh] = model.try_emplace(n.key);
      ModelKey& m = it->second;
      if (fresh) {
        model_keys.push_back(n.key);
        m.first = &n;
        m.first_rank = r;
      } else {
        if (m.needers.back().first == r) throw UsageError(who + " needs it twice");
        check_same_tensor(*m.first, m.first_rank, n, r, "needs");
      }
      m.needers.emplace_back(r, static_cast<int32_t>(i));
    }
  }

  LoadPlan plan;
  std::unordered_set<std::string> plannable;
  for (const std::string& key : model_keys) {
    const ModelKey& m = model.at(key);
    auto it = chunks_of.find(key);
    if (it == chunks_of.end()) {
      plan.missing_keys.push_back(key);
      continue;
    }
    const ChunkRecord& stored = index[it->second.front()];
    if (stored.global_shape != m.first->global_shape) {
      plan.size_mismatches.push_back({key, stored.global_shape, m.first->global_shape});
      continue;
    }
    if (stored.dtype != m.first->dtype)
      plan.conversions.push_back({key, stored.dtype, m.first->dtype});
    std::vector<Box> boxes;
    for (int32_t c : it->second) boxes.push_back(chunk_box(index[c]));
    bool covered = true;
    for (const auto& [r, i] : m.needers) {
      const Box& region = needs[r][i].region;
      const int64_t want = box_numel(region);
      if (want == 0) continue;
      // Chunks of a validated index are disjoint, so their overlaps with the region add up.
      int64_t have = 0;
      for (const Box& b : boxes) {
        if (auto x = intersect(b, region)) have += box_numel(*x);
      }
      if (have == want) continue;
      covered = false;
      plan.uncovered.push_back({key, r, uncovered_bounds(region, boxes).value_or(region)});
    }
    if (covered) plannable.insert(key);
  }
  for (const std::string& key : index_keys) {
    if (!model.count(key)) plan.unexpected_keys.push_back(key);
  }

  // Pieces, chunk by chunk in index order: the needed part of each chunk cut into boxes with
  // one receiver set each, then into pieces that fit a message.
  for (size_t c = 0; c < index.size(); ++c) {
    const ChunkRecord& chunk = index[c];
    if (!plannable.count(chunk.key)) continue;
    const Box cbox = chunk_box(chunk);
    const int64_t elem = dtype_size(chunk.dtype);
    std::vector<Box> parts;
    std::vector<std::pair<int, int32_t>> owners;
    for (const auto& [r, i] : model.at(chunk.key).needers) {
      if (auto x = intersect(cbox, needs[r][i].region)) {
        parts.push_back(*x);
        owners.emplace_back(r, i);
      }
    }
    if (parts.empty()) continue;
    for (const auto& [box, in] : decompose(cbox, parts)) {
      std::vector<std::pair<int, int32_t>> receivers;
      for (int p : in) receivers.push_back(owners[p]);
      for (Box& piece : split_for_budget(box, elem, options.message_bytes)) {
        const int64_t nbytes = box_numel(piece) * elem;
        plan.pieces.push_back(
            Piece{static_cast<int32_t>(c), std::move(piece), 0, receivers, nbytes});
      }
    }
  }

  // Readers: largest pieces first, each to the receiver with the fewest bytes so far.
  std::vector<size_t> order(plan.pieces.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return plan.pieces[a].nbytes > plan.pieces[b].nbytes;
  });
  plan.read_bytes.assign(nranks, 0);
  for (size_t p : order) {
    Piece& piece = plan.pieces[p];
    int best = piece.receivers.front().first;
    for (const auto& [r, i] : piece.receivers) {
      if (plan.read_bytes[r] < plan.read_bytes[best]) best = r;
    }
    piece.reader = best;
    plan.read_bytes[best] += piece.nbytes;
  }

  // Messages: pieces with the same reader and receiving ranks, packed in piece order; a message
  // is closed when the next piece would overflow it. Messages run in order of creation.
  std::map<std::pair<int, std::vector<int>>, size_t> open;
  for (size_t p = 0; p < plan.pieces.size(); ++p) {
    const Piece& piece = plan.pieces[p];
    std::vector<int> ranks;
    for (const auto& [r, i] : piece.receivers) ranks.push_back(r);
    auto [it, fresh] = open.try_emplace({piece.reader, ranks}, plan.messages.size());
    if (!fresh && plan.messages[it->second].nbytes + piece.nbytes > options.message_bytes) {
      it->second = plan.messages.size();
      fresh = true;
    }
    if (fresh) plan.messages.push_back(Message{piece.reader, std::move(ranks), {}, 0});
    Message& msg = plan.messages[it->second];
    msg.pieces.push_back(static_cast<int32_t>(p));
    msg.nbytes += piece.nbytes;
  }
  return plan;
}

}  // namespace shardload
