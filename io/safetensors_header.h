// The header of a .safetensors file, parsed and checked without LibTorch: an 8-byte
// little-endian length, then that many bytes of JSON, then the data section.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/shape.h"

namespace shardload {

/// The largest JSON header accepted, as the reference implementation (100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;
/// The most keys of a header's top level (tensors), and of its `__metadata__`.
inline constexpr uint64_t kMaxSafetensorsKeys = uint64_t{1} << 21;

/// One tensor of the header, checked.
struct SafetensorsEntry {
  std::string key;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0;  ///< data_offsets, relative to the data section
  uint64_t end = 0;
};

/// A checked header.
struct SafetensorsHeader {
  /// In the order of their data (the order the writer laid them out); ties, zero-size
  /// tensors, keep the header's order.
  std::vector<SafetensorsEntry> entries;
  /// `__metadata__`: string keys and string values, in the header's order.
  std::vector<std::pair<std::string, std::string>> metadata;
};

/// The header length that the file's first 8 bytes declare, checked against the 100 MB limit
/// and the `file_size`. Throws FormatError otherwise.
uint64_t safetensors_header_length(const unsigned char (&prefix)[8], uint64_t file_size);

/// Parses and checks the JSON header `json` of a file whose data section has `data_size`
/// bytes, from parse events (no JSON tree; linear time but for the final sort by offset), each
/// limit checked as its event arrives, before anything is kept: nesting (at most 3 levels),
/// duplicate keys (hashed), at most kMaxSafetensorsKeys keys, arrays of at most kMaxDims
/// items, the bytes kept within parse_budget() of the header's size (io/read_budget.h); every
/// entry's dtype, shape (checked arithmetic, at most kMaxDims dimensions) and data_offsets
/// (inside the data section, matching shape and dtype, not overlapping another entry's), keys
/// (valid UTF-8, no NUL), `__metadata__` (an object of strings). Throws FormatError naming the key.
SafetensorsHeader parse_safetensors_header(std::string_view json, uint64_t data_size);

}  // namespace shardload
