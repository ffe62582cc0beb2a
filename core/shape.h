// Shapes, their text forms, and the overflow-checked arithmetic every shape and byte count that
// comes from a file goes through.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/small_vector.h"

namespace shardload {

/// A tensor shape or an offset: one extent per dimension; empty for a 0-d tensor. Up to four
/// extents are held in place (SmallVector): the shapes of nearly every tensor cost no
/// allocation, where an index of 100,000 tensors holds 300,000 of them.
using Shape = SmallVector<int64_t, 4>;

/// The most dimensions a tensor may have anywhere: in a file of any format, in an index row on
/// the wire, in a declared layout (PyTorch's own limit is 64 too).
inline constexpr int64_t kMaxDims = 64;

/// Number of elements (1 for a 0-d shape). Throws FormatError when an extent is negative or the
/// product does not fit in int64 (a crafted index can declare such a shape).
int64_t numel(const Shape& shape);
/// numel(shape) * elem_size, checked like numel().
int64_t byte_size(const Shape& shape, int64_t elem_size);

/// a * b and a + b; throw FormatError("<what>: integer overflow ...") when the exact result does
/// not fit (or, for int64, a negative operand where the caller expects none is the caller's check).
int64_t checked_mul(int64_t a, int64_t b, const char* what = "size");
int64_t checked_add(int64_t a, int64_t b, const char* what = "size");
uint64_t checked_mul(uint64_t a, uint64_t b, const char* what = "size");
uint64_t checked_add(uint64_t a, uint64_t b, const char* what = "size");

/// "[3, 4]" ("[]" for 0-d).
std::string shape_str(const Shape& shape);
/// PyTorch's form: "torch.Size([3, 4])".
std::string torch_size_str(const Shape& shape);

}  // namespace shardload
