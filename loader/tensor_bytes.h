// Between LibTorch tensors and the format's dtypes and bytes.
#pragma once

#include <ATen/core/Tensor.h>

#include "core/dtype.h"
#include "core/shape.h"
#include "io/torch_dtype.h"
#include "sharding/box.h"

namespace shardload {

/// The format dtype of a tensor; throws UsageError naming `key` for dtypes the format lacks
/// (quantized, bits, bcomplex32, sub-byte integers).
DType dtype_of(const at::Tensor& tensor, const std::string& key);
/// The tensor's shape.
Shape shape_of(const at::Tensor& tensor);
/// The part of `tensor` that `box` covers (box coordinates relative to the tensor's origin): a
/// view.
at::Tensor box_view(const at::Tensor& tensor, const Box& box);
/// The tensor as a contiguous CPU tensor (itself when it already is one).
at::Tensor host_contiguous(const at::Tensor& tensor);

/// The host bytes of tensors, one tensor at a time: a contiguous CPU tensor is used as it is;
/// any other (non-contiguous, or in CUDA memory) is copied into one reusable buffer that grows
/// to the largest such tensor — page-locked when the tensor is on a GPU, so the device-to-host
/// copy runs at full speed. A save never holds a second copy of the model in host memory.
class HostBytes {
 public:
  /// The tensor's bytes, contiguous, little-endian; valid until the next call.
  const void* of(const at::Tensor& tensor);

 private:
  at::Tensor buffer_;
};

}  // namespace shardload
