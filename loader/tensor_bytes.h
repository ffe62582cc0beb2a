// Between LibTorch tensors and the format's dtypes and bytes.
#pragma once

#include <ATen/core/Tensor.h>

#include "core/dtype.h"
#include "core/shape.h"
#include "io/torch_dtype.h"

namespace shardload {

/// The format dtype of a tensor; throws UsageError naming `key` for dtypes the format lacks
/// (complex, quantized, float8...).
DType dtype_of(const at::Tensor& tensor, const std::string& key);
/// The tensor's shape.
Shape shape_of(const at::Tensor& tensor);
/// The tensor as a contiguous CPU tensor (itself when it already is one).
at::Tensor host_contiguous(const at::Tensor& tensor);

}  // namespace shardload
