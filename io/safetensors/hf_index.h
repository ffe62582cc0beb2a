// The index of a Hugging Face sharded checkpoint (`model.safetensors.index.json`): which shard file
// holds each key. Parsed without building a JSON tree, bounded before anything is kept.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardload {

/// The index file of a sharded Hugging Face checkpoint, and the one file of an unsharded one.
inline constexpr const char* kHfIndexName = "model.safetensors.index.json";
inline constexpr const char* kHfSingleName = "model.safetensors";

/// Limits on an index file: its size, the keys of its weight_map (a mixture-of-experts model of
/// 2024 has about 10^5), the bytes of a key or name.
inline constexpr uint64_t kMaxHfIndexBytes = uint64_t{64} << 20;
inline constexpr uint64_t kMaxHfIndexEntries = uint64_t{1} << 20;
inline constexpr size_t kMaxHfKeyBytes = size_t{64} << 10;

/// A checked index.
struct HfIndex {
  /// The distinct shard files the weight_map names, sorted by name (model-00001-of-00003...).
  std::vector<std::string> files;
  /// Each key and the number of its file in `files`, in the JSON's order.
  std::vector<std::pair<std::string, int32_t>> weight_map;
  /// The scalars of the "metadata" object (total_size, ...) as text, in the JSON's order.
  std::vector<std::pair<std::string, std::string>> metadata;
};

/// True when `name` is a plain file name: not empty, at most 255 bytes, no '/' or NUL, not "."
/// or "..", valid UTF-8.
bool is_plain_file_name(std::string_view name);

/// Parses and checks the text of an index: a JSON object whose "weight_map" is an object of
/// key -> file name (each key once, valid UTF-8 without NUL; each file a plain name ending in
/// .safetensors), whose "metadata", when present, is an object of scalars; other top-level
/// members are ignored when scalars. Nothing nests deeper than two levels; at most
/// kMaxHfIndexEntries keys. Throws FormatError naming the key or file name.
HfIndex parse_hf_index(std::string_view json);

/// Reads and parses the index file at `path` (at most kMaxHfIndexBytes). Throws FormatError
/// "In <path>: ...".
HfIndex read_hf_index(const std::string& path);

}  // namespace shardload
