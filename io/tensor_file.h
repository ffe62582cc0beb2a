// Foreign single-file formats: PyTorch's torch.save files and safetensors.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace shardload {

/// A tensor with its state-dict key.
struct NamedTensor {
  std::string key;
  at::Tensor tensor;
};

/// A state dict in file order.
using TensorList = std::vector<NamedTensor>;

/// True when `path` names a file format read_tensor_file understands (.pt, .pth, .bin,
/// .safetensors).
bool is_tensor_file(const std::string& path);

/// Reads a state dict from a `.pt`/`.pth`/`.bin` file written by torch.save (zip format) or a
/// `.safetensors` file, choosing by extension. Tensors come back as contiguous CPU tensors.
/// Throws FormatError naming the file (and the key, where one is involved).
TensorList read_tensor_file(const std::string& path);

/// Writes a state dict as `.pt` (loadable by Python's torch.load, weights_only too) or
/// `.safetensors`, by extension. Non-contiguous tensors are written contiguous.
void write_tensor_file(const std::string& path, const TensorList& tensors);

}  // namespace shardload
