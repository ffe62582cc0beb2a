// The safetensors format: an 8-byte little-endian header length, a JSON header, then the data.
#pragma once

#include <string>

#include "io/tensor_file.h"

namespace shardload {

/// Reads every tensor of a .safetensors file, in the order of their data offsets (the order
/// the writer laid them out). `__metadata__` is accepted and ignored. Offsets, shapes and sizes
/// are validated against each other and the file. Throws FormatError "In <path>: key '...': ..."
TensorList read_safetensors_file(const std::string& path);

/// Writes `tensors` as a .safetensors file, data laid out in list order, header entries in list
/// order, `__metadata__` = {"format": "pt"} (as safetensors.torch.save_file writes). The file
/// appears complete or not at all. Throws UsageError for duplicate keys, keys that are not UTF-8
/// and unsupported dtypes, FormatError when the file cannot be written.
void write_safetensors_file(const std::string& path, const TensorList& tensors);

}  // namespace shardload
