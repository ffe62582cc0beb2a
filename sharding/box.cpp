#include "sharding/box.h"

#include <algorithm>

#include "core/error.h"

namespace shardload {
namespace {

void check_box_rank(const Box& box, const char* what) {
  if (box.offset.size() != box.shape.size()) {
    throw UsageError(std::string(what) + ": box offset " + shape_str(box.offset) + " and shape " +
                     shape_str(box.shape) + " differ in number of dimensions");
  }
}

}  // namespace

Box full_box(const Shape& global) { return Box{Shape(global.size(), 0), global}; }

int64_t box_numel(const Box& box) { return numel(box.shape); }

std::optional<Box> intersect(const Box& a, const Box& b) {
  check_box_rank(a, "intersect");
  check_box_rank(b, "intersect");
  if (a.shape.size() != b.shape.size()) {
    throw UsageError("intersect: boxes " + box_str(a) + " and " + box_str(b) +
                     " differ in number of dimensions");
  }
  Box out;
  out.offset.resize(a.shape.size());
  out.shape.resize(a.shape.size());
  for (size_t d = 0; d < a.shape.size(); ++d) {
    const int64_t lo = std::max(a.offset[d], b.offset[d]);
    const int64_t hi = std::min(a.offset[d] + a.shape[d], b.offset[d] + b.shape[d]);
    if (hi <= lo) return std::nullopt;
    out.offset[d] = lo;
    out.shape[d] = hi - lo;
  }
  return out;
}

bool contains(const Box& outer, const Box& inner) {
  if (box_numel(inner) == 0) return true;
  if (outer.shape.size() != inner.shape.size() || outer.offset.size() != outer.shape.size() ||
      inner.offset.size() != inner.shape.size()) {
    return false;
  }
  for (size_t d = 0; d < outer.shape.size(); ++d) {
    if (inner.offset[d] < outer.offset[d] ||
        inner.offset[d] + inner.shape[d] > outer.offset[d] + outer.shape[d]) {
      return false;
    }
  }
  return true;
}

bool inside(const Shape& global, const Box& box) {
  if (box.shape.size() != global.size() || box.offset.size() != global.size()) return false;
  for (size_t d = 0; d < global.size(); ++d) {
    if (box.offset[d] < 0 || box.shape[d] < 0 || box.offset[d] > global[d] - box.shape[d]) {
      return false;
    }
  }
  return true;
}

std::string box_str(const Box& box) {
  std::string s = "[";
  for (size_t d = 0; d < box.shape.size(); ++d) {
    if (d) s += ", ";
    const int64_t lo = d < box.offset.size() ? box.offset[d] : 0;
    // The box may come from an untrusted index whose end does not fit in int64: say so.
    int64_t hi = 0;
    const bool overflows = __builtin_add_overflow(lo, box.shape[d], &hi);
    s += std::to_string(lo) + ":" +
         (overflows ? std::to_string(lo) + "+" + std::to_string(box.shape[d]) : std::to_string(hi));
  }
  return s + "]";
}

Box even_split(const Shape& global, int64_t dim, int parts, int index) {
  if (dim < 0 || dim >= static_cast<int64_t>(global.size())) {
    throw UsageError("even_split: dimension " + std::to_string(dim) +
                     " is out of range for shape " + shape_str(global));
  }
  if (parts < 1 || index < 0 || index >= parts) {
    throw UsageError("even_split: part " + std::to_string(index) + " of " + std::to_string(parts) +
                     " does not exist");
  }
  const int64_t size = global[dim];
  const int64_t base = size / parts;
  const int64_t extra = size % parts;
  Box box = full_box(global);
  box.offset[dim] = index * base + std::min<int64_t>(index, extra);
  box.shape[dim] = base + (index < extra ? 1 : 0);
  return box;
}

void for_each_budget_piece(const Box& box, int64_t elem_size, int64_t max_bytes,
                           const std::function<void(const Box&)>& fn) {
  check_box_rank(box, "split_for_budget");
  if (elem_size <= 0) {
    throw UsageError("split_for_budget: element size " + std::to_string(elem_size) +
                     " is not positive");
  }
  const int64_t n = box_numel(box);
  if (n <= 0) return;
  const int64_t max_elems = std::max<int64_t>(1, max_bytes / elem_size);
  if (n <= max_elems) return fn(box);

  // The outermost dimension `cut` at which one "row" (all elements of the dimensions after it)
  // fits; slabs of `rows` rows along it are the pieces, one set of slabs per index of the
  // dimensions before it. There is always one: a row of the last dimension is one element.
  const int ndim = static_cast<int>(box.shape.size());
  int cut = ndim - 1;
  int64_t row = 1;  // elements per index of dimension `cut`
  {
    int64_t inner = 1;
    for (int d = ndim - 1; d >= 0; --d) {
      if (inner > max_elems) break;
      cut = d;
      row = inner;
      inner *= box.shape[d];
    }
  }
  const int64_t rows = std::max<int64_t>(1, max_elems / row);

  Shape index(cut, 0);  // current index in the dimensions before `cut`, C order
  while (true) {
    for (int64_t start = 0; start < box.shape[cut]; start += rows) {
      Box piece = box;
      for (int d = 0; d < cut; ++d) {
        piece.offset[d] = box.offset[d] + index[d];
        piece.shape[d] = 1;
      }
      piece.offset[cut] = box.offset[cut] + start;
      piece.shape[cut] = std::min(rows, box.shape[cut] - start);
      fn(piece);
    }
    int d = cut - 1;
    for (; d >= 0; --d) {
      if (++index[d] < box.shape[d]) break;
      index[d] = 0;
    }
    if (d < 0) return;
  }
}

std::vector<Box> split_for_budget(const Box& box, int64_t elem_size, int64_t max_bytes) {
  std::vector<Box> pieces;
  for_each_budget_piece(box, elem_size, max_bytes,
                        [&](const Box& piece) { pieces.push_back(piece); });
  return pieces;
}

std::optional<Box> uncovered_bounds(const Box& region, const std::vector<Box>& covers) {
  const size_t ndim = region.shape.size();
  std::vector<Box> clipped;
  for (const Box& c : covers) {
    if (auto i = intersect(region, c)) clipped.push_back(*i);
  }
  std::vector<std::vector<int64_t>> cuts(ndim);
  for (size_t d = 0; d < ndim; ++d) {
    cuts[d] = {region.offset[d], region.offset[d] + region.shape[d]};
    for (const Box& c : clipped) {
      cuts[d].push_back(c.offset[d]);
      cuts[d].push_back(c.offset[d] + c.shape[d]);
    }
    std::sort(cuts[d].begin(), cuts[d].end());
    cuts[d].erase(std::unique(cuts[d].begin(), cuts[d].end()), cuts[d].end());
    if (cuts[d].size() < 2) return std::nullopt;  // empty region
  }
  std::optional<Box> bounds;
  std::vector<size_t> at(ndim, 0);
  while (true) {
    Box cell;
    for (size_t d = 0; d < ndim; ++d) {
      cell.offset.push_back(cuts[d][at[d]]);
      cell.shape.push_back(cuts[d][at[d] + 1] - cuts[d][at[d]]);
    }
    const bool covered = std::any_of(clipped.begin(), clipped.end(),
                                     [&](const Box& c) { return contains(c, cell); });
    if (!covered) {
      if (!bounds) {
        bounds = cell;
      } else {
        for (size_t d = 0; d < ndim; ++d) {
          const int64_t lo = std::min(bounds->offset[d], cell.offset[d]);
          const int64_t hi =
              std::max(bounds->offset[d] + bounds->shape[d], cell.offset[d] + cell.shape[d]);
          bounds->offset[d] = lo;
          bounds->shape[d] = hi - lo;
        }
      }
    }
    size_t d = ndim;
    while (d > 0 && ++at[d - 1] + 1 >= cuts[d - 1].size()) at[--d] = 0;
    if (d == 0) break;
  }
  return bounds;
}

}  // namespace shardload
