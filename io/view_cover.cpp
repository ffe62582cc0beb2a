#include "io/view_cover.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/error.h"

namespace shardload {
namespace {

int64_t saturating_mul(int64_t a, int64_t b) {
  int64_t r = 0;
  return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}

}  // namespace

ViewCover::ViewCover(const Shape& shape, const Shape& stride) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (size, stride): those that matter
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 0) {
      empty_ = true;
      runs_ = 0;
      run_ = 0;
      return;
    }
    if (shape[d] > 1 && stride[d] > 0) dims.emplace_back(shape[d], stride[d]);
  }
  std::sort(dims.begin(), dims.end(),
            [](const auto& a, const auto& b) { return a.second < b.second; });
  // Runs: a dimension whose stride is at most the run's length extends it (a contiguous or
  // overlapping step: every element in between is covered).
  size_t i = 0;
  for (; i < dims.size() && dims[i].second <= run_; ++i) {
    run_ += (dims[i].first - 1) * dims[i].second;
  }
  // The rest are arithmetic progressions {0, s, ..., (n-1)s}: one whose stride is a multiple k
  // of the previous one's, with k at most that one's size, fills its gaps and merges into it.
  for (; i < dims.size(); ++i) {
    if (!outer_.empty()) {
      auto& [n, s] = outer_.back();
      const int64_t k = dims[i].second / s;
      if (dims[i].second % s == 0 && k <= n) {
        n += k * (dims[i].first - 1);
        continue;
      }
    }
    outer_.push_back(dims[i]);
  }
  std::reverse(outer_.begin(), outer_.end());
  span_ = run_;
  for (const auto& [n, s] : outer_) {
    span_ += (n - 1) * s;
    runs_ = saturating_mul(runs_, n);
  }
}

int64_t ViewCover::work() const { return saturating_mul(run_, runs_); }

int64_t first_bad_bool(const ViewCover& cover, const unsigned char* bytes) {
  int64_t bad = -1;
  // Branch-free over each run (it vectorizes); the position is searched for only on a find.
  cover.for_each_run([&](int64_t first, int64_t count) {
    if (bad >= 0) return;
    const unsigned char* p = bytes + first;
    unsigned char high = 0;
    for (int64_t k = 0; k < count; ++k) high |= p[k] & 0xFE;
    if (high == 0) return;
    for (int64_t k = 0; k < count; ++k) {
      if (p[k] > 1) {
        bad = first + k;
        return;
      }
    }
  });
  return bad;
}

namespace {

template <typename T>
void copy_strided(const char* from, int64_t n, int64_t stride, char* to) {
  const auto* src = reinterpret_cast<const T*>(from);
  auto* dst = reinterpret_cast<T*>(to);
  for (int64_t k = 0; k < n; ++k) std::memcpy(dst + k, src + k * stride, sizeof(T));
}

void copy_row(const char* from, int64_t n, int64_t stride, int64_t elem_size, char* to) {
  if (stride == 1) {
    std::memcpy(to, from, static_cast<size_t>(n * elem_size));
    return;
  }
  switch (elem_size) {
    case 1:
      return copy_strided<uint8_t>(from, n, stride, to);
    case 2:
      return copy_strided<uint16_t>(from, n, stride, to);
    case 4:
      return copy_strided<uint32_t>(from, n, stride, to);
    case 8:
      return copy_strided<uint64_t>(from, n, stride, to);
    default:
      for (int64_t k = 0; k < n; ++k) {
        std::memcpy(to + k * elem_size, from + k * stride * elem_size,
                    static_cast<size_t>(elem_size));
      }
  }
}

}  // namespace

void gather_view(const char* from, const Shape& shape, const Shape& stride, int64_t elem_size,
                 char* to) {
  if (numel(shape) == 0) return;
  if (shape.empty()) {
    std::memcpy(to, from, static_cast<size_t>(elem_size));
    return;
  }
  const size_t last = shape.size() - 1;
  const int64_t row = shape[last];
  std::vector<int64_t> index(last, 0);
  int64_t pos = 0;  // element offset of the row's first element
  while (true) {
    copy_row(from + pos * elem_size, row, stride[last], elem_size, to);
    to += row * elem_size;
    size_t d = last;
    while (d > 0) {
      --d;
      if (++index[d] < shape[d]) {
        pos += stride[d];
        break;
      }
      pos -= (shape[d] - 1) * stride[d];
      index[d] = 0;
      if (d == 0) return;
    }
    if (last == 0) return;
  }
}

const ViewCover& check_view_cover(const ViewCover& cover, const Shape& shape) {
  int64_t most = 0;
  if (__builtin_mul_overflow(std::max<int64_t>(cover.span(), 1 << 16), kMaxViewVisitsPerElement,
                             &most) ||
      cover.work() > most) {
    throw FormatError("a view of shape " + shape_str(shape) + " whose elements overlap " +
                      std::to_string(cover.work()) + " times over " + std::to_string(cover.span()) +
                      " stored elements (at most " + std::to_string(kMaxViewVisitsPerElement) +
                      " visits each)");
  }
  return cover;
}

void check_bool_view(const unsigned char* bytes, const Shape& shape, const Shape& stride,
                     uint64_t file_pos) {
  const ViewCover cover(shape, stride);
  const int64_t bad = first_bad_bool(check_view_cover(cover, shape), bytes);
  if (bad < 0) return;
  throw FormatError("bool element " + std::to_string(bad) +
                    " of the stored bytes the view covers (byte " + std::to_string(file_pos + bad) +
                    " of the file) holds byte value " + std::to_string(bytes[bad]) +
                    " (a bool is 0 or 1)");
}

}  // namespace shardload
