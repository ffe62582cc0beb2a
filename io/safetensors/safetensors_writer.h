// Writing .safetensors files: an 8-byte little-endian header length, a JSON header, then the
// data. Reading is SafetensorsReader's (safetensors_reader.h).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "io/tensor_file.h"

namespace shardload {

/// Writes `tensors` as a .safetensors file, data laid out in list order, header entries in list
/// order, `__metadata__` = {"format": "pt"} (as safetensors.torch.save_file writes) plus
/// `metadata`. The file appears complete or not at all (AtomicFile). Throws UsageError for
/// duplicate keys, keys that are not UTF-8 or hold NUL and unsupported dtypes, FormatError when
/// the file cannot be written.
void write_safetensors_file(const std::string& path, const TensorList& tensors,
                            const std::vector<std::pair<std::string, std::string>>& metadata = {});

}  // namespace shardload
