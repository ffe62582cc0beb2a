// Finding the boxes that overlap a box among many, without testing every pair.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/shape.h"

namespace shardload {

/// Boxes sorted by their start along one dimension, to visit those that overlap a query along
/// it without a scan: an overlapping box starts after (query start - longest extent) and before
/// the query's end. Used where a key has many chunks and many needing groups (a split over
/// thousands of ranks), so that matching them costs O(n log n + overlaps), not O(n^2).
class Sweep {
 public:
  /// `boxes(i)` gives box i as (offset, shape); empty boxes are left out (they overlap nothing).
  template <typename BoxOf>
  Sweep(size_t n, size_t ndim, BoxOf&& boxes) {
    // The dimension along which the boxes' starts differ most.
    size_t best = 0;
    size_t best_distinct = 0;
    std::vector<int64_t> starts(n);
    for (size_t d = 0; d < ndim; ++d) {
      for (size_t i = 0; i < n; ++i) starts[i] = boxes(i).first[d];
      std::sort(starts.begin(), starts.end());
      const auto distinct =
          static_cast<size_t>(std::unique(starts.begin(), starts.end()) - starts.begin());
      if (distinct > best_distinct) {
        best_distinct = distinct;
        best = d;
      }
    }
    dim_ = best;
    items_.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      const auto [offset, shape] = boxes(i);
      if (numel(shape) == 0) continue;
      items_.push_back({offset[dim_], offset[dim_] + shape[dim_], static_cast<int32_t>(i)});
      longest_ = std::max(longest_, shape[dim_]);
    }
    std::sort(items_.begin(), items_.end(),
              [](const Item& a, const Item& b) { return a.start < b.start; });
  }
  /// Appends to `out` the ids of the boxes that overlap [offset, offset + shape) along the sweep
  /// dimension (callers test the other dimensions).
  void candidates(const Shape& offset, const Shape& shape, std::vector<int32_t>& out) const;

 private:
  struct Item {
    int64_t start, end;
    int32_t id;
  };
  size_t dim_ = 0;
  int64_t longest_ = 0;
  std::vector<Item> items_;
};

}  // namespace shardload
