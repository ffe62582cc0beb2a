// Which storage elements a strided view (a .pt tensor that is a slice, a transpose or a stride-0
// expansion of its storage) really covers, found without visiting every element: dimensions of
// size 1 or stride 0 add nothing, and dimensions whose steps fill the gaps of the ones inside
// them merge into runs of consecutive elements. Value checks (bool bytes) then judge exactly the
// stored bytes a view covers, before any copy, and none it does not. No LibTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "core/shape.h"

namespace shardload {

/// The storage elements that the view of `shape` and `stride` (in elements, non-negative)
/// covers, relative to its first element, as runs of consecutive elements.
class ViewCover {
 public:
  ViewCover(const Shape& shape, const Shape& stride);

  /// True when the view has no elements.
  bool empty() const { return empty_; }
  /// Elements from the first to the last covered, inclusive (0 when empty): the part of the
  /// storage the view reaches.
  int64_t span() const { return span_; }
  /// Elements of one run.
  int64_t run() const { return run_; }
  /// Runs in all (saturating at INT64_MAX).
  int64_t runs() const { return runs_; }
  /// Elements visited by for_each_run: run() * runs(), saturating. At most span() when no two
  /// elements of the view share a storage element; more for overlapping views the merge does
  /// not fold (strides 2 and 3 over one storage, ...).
  int64_t work() const;

  /// Calls fn(first, count) for each run, `first` relative to the view's first element, in
  /// ascending order when the view's elements do not overlap.
  template <class Fn>
  void for_each_run(Fn&& fn) const {
    if (empty_) return;
    std::vector<int64_t> index(outer_.size(), 0);
    int64_t base = 0;
    while (true) {
      fn(base, run_);
      size_t d = outer_.size();
      while (d > 0) {
        --d;
        if (++index[d] < outer_[d].first) {
          base += outer_[d].second;
          break;
        }
        base -= (outer_[d].first - 1) * outer_[d].second;
        index[d] = 0;
        if (d == 0) return;
      }
      if (outer_.empty()) return;
    }
  }

 private:
  bool empty_ = false;
  int64_t span_ = 0;
  int64_t run_ = 1;
  int64_t runs_ = 1;
  std::vector<std::pair<int64_t, int64_t>> outer_;  ///< (size, stride), largest stride first
};

/// The first element (relative to the view's first) among those `cover` covers whose byte in
/// `bytes` (the view's first element at bytes[0], one byte per element: a bool view) is neither
/// 0 nor 1; -1 when there is none.
int64_t first_bad_bool(const ViewCover& cover, const unsigned char* bytes);

/// Copies the elements of the view (`shape`, `stride` in elements, its first element at
/// `from`) of `elem_size`-byte elements into `to`, contiguous in C order.
void gather_view(const char* from, const Shape& shape, const Shape& stride, int64_t elem_size,
                 char* to);

/// Throws FormatError "bool element I of the stored bytes the view covers (byte B of the file)
/// holds byte value V" when a byte that the view (`shape`, `stride` in elements, its first
/// element at `bytes[0]`, at file position `file_pos`) covers is neither 0 nor 1; no other byte
/// is judged. The caller adds the key. Views overlapping too much are refused
/// (check_view_cover).
void check_bool_view(const unsigned char* bytes, const Shape& shape, const Shape& stride,
                     uint64_t file_pos);

/// The most elements a check of a view may visit per element of the storage it spans (views
/// overlapping beyond what ViewCover folds), past a floor of 2^16 elements.
inline constexpr int64_t kMaxViewVisitsPerElement = 4;

/// Returns `cover`; throws FormatError when visiting its runs would take more than
/// kMaxViewVisitsPerElement visits per element it spans (a view of `shape` crafted to overlap).
const ViewCover& check_view_cover(const ViewCover& cover, const Shape& shape);

}  // namespace shardload
