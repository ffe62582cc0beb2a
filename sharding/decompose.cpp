#include "sharding/decompose.h"

#include <algorithm>
#include <unordered_map>

namespace shardload {
namespace {

/// A box in grid-index space (half-open per dimension) and the set of parts it lies in.
struct GridBox {
  int32_t label = 0;
  std::vector<int64_t> lo, hi;
};

/// Merges boxes that are adjacent along `dim` and agree on the label and on every other
/// dimension. Applied innermost dimension first, it turns the grid's cells back into few boxes.
std::vector<GridBox> merge_along(std::vector<GridBox> boxes, size_t dim) {
  // Sorting by (label, other dims, lo[dim]) puts mergeable boxes next to each other.
  auto less = [dim](const GridBox& a, const GridBox& b) {
    if (a.label != b.label) return a.label < b.label;
    for (size_t d = 0; d < a.lo.size(); ++d) {
      if (d == dim) continue;
      if (a.lo[d] != b.lo[d]) return a.lo[d] < b.lo[d];
      if (a.hi[d] != b.hi[d]) return a.hi[d] < b.hi[d];
    }
    return a.lo[dim] < b.lo[dim];
  };
  auto same_line = [dim](const GridBox& a, const GridBox& b) {
    if (a.label != b.label) return false;
    for (size_t d = 0; d < a.lo.size(); ++d) {
      if (d != dim && (a.lo[d] != b.lo[d] || a.hi[d] != b.hi[d])) return false;
    }
    return true;
  };
  std::sort(boxes.begin(), boxes.end(), less);
  std::vector<GridBox> out;
  out.reserve(boxes.size());
  for (GridBox& b : boxes) {
    if (!out.empty() && same_line(out.back(), b) && out.back().hi[dim] == b.lo[dim]) {
      out.back().hi[dim] = b.hi[dim];
    } else {
      out.push_back(std::move(b));
    }
  }
  return out;
}

}  // namespace

std::vector<std::pair<Box, std::vector<int32_t>>> decompose(const Box& chunk,
                                                            const std::vector<Box>& parts) {
  const size_t ndim = chunk.shape.size();
  std::vector<std::vector<int64_t>> cuts(ndim);
  for (size_t d = 0; d < ndim; ++d) {
    cuts[d] = {chunk.offset[d], chunk.offset[d] + chunk.shape[d]};
    for (const Box& p : parts) {
      cuts[d].push_back(p.offset[d]);
      cuts[d].push_back(p.offset[d] + p.shape[d]);
    }
    std::sort(cuts[d].begin(), cuts[d].end());
    cuts[d].erase(std::unique(cuts[d].begin(), cuts[d].end()), cuts[d].end());
  }
  // Cells in C order; strides of the grid.
  std::vector<int64_t> extent(ndim), stride(ndim);
  int64_t cells = 1;
  for (size_t d = ndim; d-- > 0;) {
    extent[d] = static_cast<int64_t>(cuts[d].size()) - 1;
    stride[d] = cells;
    cells *= extent[d];
  }
  // Labels are ascending part lists, grown one part at a time (parts in ascending order): a
  // trie whose node 0 is the empty list.
  std::vector<int32_t> label_of_cell(static_cast<size_t>(cells), 0);
  std::vector<std::vector<int32_t>> labels(1);
  std::unordered_map<uint64_t, int32_t> extended;  // (label << 32 | part) -> label
  std::vector<int64_t> lo(ndim), hi(ndim), at(ndim);
  for (size_t p = 0; p < parts.size(); ++p) {
    for (size_t d = 0; d < ndim; ++d) {
      lo[d] =
          std::lower_bound(cuts[d].begin(), cuts[d].end(), parts[p].offset[d]) - cuts[d].begin();
      hi[d] =
          std::lower_bound(cuts[d].begin(), cuts[d].end(), parts[p].offset[d] + parts[p].shape[d]) -
          cuts[d].begin();
    }
    at = lo;
    while (true) {
      int64_t cell = 0;
      for (size_t d = 0; d < ndim; ++d) cell += at[d] * stride[d];
      int32_t& label = label_of_cell[static_cast<size_t>(cell)];
      const uint64_t edge = (static_cast<uint64_t>(label) << 32) | static_cast<uint64_t>(p);
      auto [it, fresh] = extended.try_emplace(edge, static_cast<int32_t>(labels.size()));
      if (fresh) {
        std::vector<int32_t> grown = labels[static_cast<size_t>(label)];
        grown.push_back(static_cast<int32_t>(p));
        labels.push_back(std::move(grown));
      }
      label = it->second;
      size_t d = ndim;
      while (d > 0 && ++at[d - 1] == hi[d - 1]) {
        at[d - 1] = lo[d - 1];
        --d;
      }
      if (d == 0) break;
    }
  }
  std::vector<GridBox> boxes;
  for (int64_t cell = 0; cell < cells; ++cell) {
    const int32_t label = label_of_cell[static_cast<size_t>(cell)];
    if (label == 0) continue;
    GridBox b{label, std::vector<int64_t>(ndim), std::vector<int64_t>(ndim)};
    for (size_t d = 0; d < ndim; ++d) {
      b.lo[d] = (cell / stride[d]) % extent[d];
      b.hi[d] = b.lo[d] + 1;
    }
    boxes.push_back(std::move(b));
  }
  for (size_t d = ndim; d-- > 0;) boxes = merge_along(std::move(boxes), d);
  std::sort(boxes.begin(), boxes.end(),
            [](const GridBox& a, const GridBox& b) { return a.lo < b.lo; });

  std::vector<std::pair<Box, std::vector<int32_t>>> out;
  out.reserve(boxes.size());
  for (const GridBox& b : boxes) {
    Box box{Shape(ndim), Shape(ndim)};
    for (size_t d = 0; d < ndim; ++d) {
      box.offset[d] = cuts[d][static_cast<size_t>(b.lo[d])];
      box.shape[d] = cuts[d][static_cast<size_t>(b.hi[d])] - box.offset[d];
    }
    out.emplace_back(std::move(box), labels[static_cast<size_t>(b.label)]);
  }
  return out;
}

}  // namespace shardload
