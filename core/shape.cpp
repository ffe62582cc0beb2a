#include "core/shape.h"

#include "core/error.h"

namespace shardload {
namespace {

template <typename T>
[[noreturn]] void overflow(const char* what, T a, T b, const char* op) {
  throw FormatError(std::string(what) + ": integer overflow in " + std::to_string(a) + " " + op +
                    " " + std::to_string(b));
}

}  // namespace

int64_t checked_mul(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) overflow(what, a, b, "*");
  return r;
}
int64_t checked_add(int64_t a, int64_t b, const char* what) {
  int64_t r;
  if (__builtin_add_overflow(a, b, &r)) overflow(what, a, b, "+");
  return r;
}
uint64_t checked_mul(uint64_t a, uint64_t b, const char* what) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) overflow(what, a, b, "*");
  return r;
}
uint64_t checked_add(uint64_t a, uint64_t b, const char* what) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) overflow(what, a, b, "+");
  return r;
}

int64_t numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) throw FormatError("shape " + shape_str(shape) + " has a negative extent");
  }
  for (int64_t d : shape) {
    if (d == 0) return 0;  // [0, huge, huge] has no elements, whatever the other extents
  }
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(n, d, &n)) {
      throw FormatError("shape " + shape_str(shape) + " has more elements than int64 can count");
    }
  }
  return n;
}

int64_t byte_size(const Shape& shape, int64_t elem_size) {
  int64_t n = numel(shape);
  int64_t r;
  if (__builtin_mul_overflow(n, elem_size, &r)) {
    throw FormatError("shape " + shape_str(shape) + " of " + std::to_string(elem_size) +
                      "-byte elements takes more bytes than int64 can count");
  }
  return r;
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
