// The manifest: written last, the commit marker of a checkpoint directory.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace shardload {

/// Contents of `manifest.h5`.
struct Manifest {
  int64_t format_version = 1;
  std::string library_version;
  std::vector<std::string> shard_files;  ///< names relative to the checkpoint directory
  std::vector<int64_t> shard_chunks;     ///< number of index rows in each shard file
  int64_t num_ranks = 1;                 ///< ranks of the job that saved it
  std::string created;                   ///< UTC time of the save, ISO 8601
  std::vector<std::pair<std::string, std::string>> metadata;  ///< caller's (key, value) strings
};

/// Name of the manifest file inside a checkpoint directory.
inline constexpr const char* kManifestName = "manifest.h5";

/// Writes `dir/manifest.h5` and flushes it to stable storage.
void write_manifest(const std::string& dir, const Manifest& manifest);
/// Reads `dir/manifest.h5`. Throws FormatError naming the path when the directory is missing,
/// has no manifest (not a checkpoint, or an interrupted save) or the manifest is invalid.
Manifest read_manifest(const std::string& dir);

/// Compact binary form, for broadcasting a manifest read by one rank.
std::string serialize_manifest(const Manifest& manifest);
Manifest deserialize_manifest(const std::string& bytes);

}  // namespace shardload
