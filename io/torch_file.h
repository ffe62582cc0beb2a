// PyTorch's torch.save files (the zip format, default since torch 1.6) holding a state dict.
#pragma once

#include <string>

#include "io/tensor_file.h"

namespace shardload {

/// Reads the state dict of a torch.save zip file: a dict or OrderedDict of str -> tensor (or
/// nn.Parameter), as written by any torch since 1.6. The pickle is read by a restricted
/// unpickler that loads only the globals a state dict needs and never runs code from the file.
/// Tensors that share a storage (views) are supported; each comes back contiguous, on the CPU.
/// Throws FormatError "In <path>: ..." (with the key where one is involved).
TensorList read_torch_file(const std::string& path);

/// Writes `tensors` as a torch.save zip file (pickle protocol 2, one storage per tensor) that
/// Python's torch.load reads, with weights_only=True or False, as an OrderedDict with the same
/// keys, dtypes, shapes and values. The file appears complete or not at all (written under a
/// temporary name, then renamed). Throws UsageError for duplicate keys, keys that are not UTF-8
/// and unsupported dtypes, FormatError when the file cannot be written.
void write_torch_file(const std::string& path, const TensorList& tensors);

}  // namespace shardload
