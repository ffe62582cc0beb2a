// Shapes and their text forms.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardload {

/// A tensor shape or an offset: one extent per dimension; empty for a 0-d tensor.
using Shape = std::vector<int64_t>;

/// Number of elements (1 for a 0-d shape).
int64_t numel(const Shape& shape);
/// "[3, 4]" ("[]" for 0-d).
std::string shape_str(const Shape& shape);
/// PyTorch's form: "torch.Size([3, 4])".
std::string torch_size_str(const Shape& shape);

}  // namespace shardload
