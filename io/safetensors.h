// The safetensors format: an 8-byte little-endian header length, a JSON header, then the data.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "io/tensor_file.h"

namespace shardload {

/// Reads every tensor of a .safetensors file, in the order of their data offsets (the order
/// the writer laid them out), and `__metadata__` as `metadata`. The header is checked before
/// anything is allocated from it (safetensors_header.h: length, nesting, offsets, shapes, keys);
/// bool tensors must hold only bytes 0 and 1. Throws FormatError "In <path>: key '...': ..."
TensorFileContents read_safetensors_contents(const std::string& path);

/// The tensors of read_safetensors_contents.
TensorList read_safetensors_file(const std::string& path);

/// Writes `tensors` as a .safetensors file, data laid out in list order, header entries in list
/// order, `__metadata__` = {"format": "pt"} (as safetensors.torch.save_file writes) plus
/// `metadata`. The file appears complete or not at all (AtomicFile). Throws UsageError for
/// duplicate keys, keys that are not UTF-8 or hold NUL and unsupported dtypes, FormatError when
/// the file cannot be written.
void write_safetensors_file(const std::string& path, const TensorList& tensors,
                            const std::vector<std::pair<std::string, std::string>>& metadata = {});

}  // namespace shardload
