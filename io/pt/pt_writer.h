// Writing PyTorch's torch.save files (the zip format, default since torch 1.6): a flat state dict
// that torch.load reads, weights_only too. Reading is PtReader's (pt_reader.h).
#pragma once

#include <string>

#include "io/tensor_file.h"

namespace shardload {

/// Writes `tensors` as a torch.save zip file (pickle protocol 2, one storage per tensor) that
/// Python's torch.load reads, with weights_only=True or False, as an OrderedDict with the same
/// keys, dtypes, shapes and values. The file appears complete or not at all (AtomicFile: unique
/// temporary, fsync, rename, directory fsync). Throws UsageError for duplicate keys, keys that
/// are not UTF-8 or hold NUL and unsupported dtypes, FormatError when the file cannot be written.
void write_torch_file(const std::string& path, const TensorList& tensors);

}  // namespace shardload
