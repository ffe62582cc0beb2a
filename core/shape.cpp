#include "core/shape.h"

namespace shardload {

int64_t numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_str(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string torch_size_str(const Shape& shape) { return "torch.Size(" + shape_str(shape) + ")"; }

}  // namespace shardload
