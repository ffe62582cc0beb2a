#include "sharding/sweep.h"

namespace shardload {

void Sweep::candidates(const Shape& offset, const Shape& shape, std::vector<int32_t>& out) const {
  const int64_t lo = offset[dim_];
  const int64_t hi = offset[dim_] + shape[dim_];
  auto it = std::lower_bound(items_.begin(), items_.end(), lo - longest_ + 1,
                             [](const Item& a, int64_t v) { return a.start < v; });
  for (; it != items_.end() && it->start < hi; ++it) {
    if (it->end > lo) out.push_back(it->id);
  }
}

}  // namespace shardload
