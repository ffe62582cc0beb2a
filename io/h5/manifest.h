// The manifest: written last, the commit marker of a checkpoint directory.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/value.h"
#include "io/h5/format.h"

namespace shardload {

/// Contents of `manifest.h5`.
struct Manifest {
  int64_t format_version = kFormatVersion;  ///< as read; write_manifest writes kFormatVersion
  std::string library_version;
  std::vector<std::string> shard_files;  ///< names relative to the checkpoint directory
  std::vector<int64_t> shard_chunks;     ///< number of index rows in each shard file
  int64_t num_ranks = 1;                 ///< ranks of the job that saved it
  std::string created;                   ///< UTC time of the save, ISO 8601
  std::vector<std::pair<std::string, std::string>> metadata;  ///< caller's (key, value) strings
  /// The state's plain values (step, scheduler state, ...), typed: the `values` dataset, its
  /// XXH3-64 in the `values_checksum` attribute (docs/FORMAT.md). Empty when the save had none.
  ValueList values;
};

/// Writes `dir/manifest.h5` and flushes it to stable storage.
void write_manifest(const std::string& dir, const Manifest& manifest);
/// Reads `dir/manifest.h5`. Throws FormatError naming the path when the directory is missing,
/// has no manifest (not a checkpoint, or an interrupted save) or the manifest is invalid: every
/// attribute a scalar of its class, strings and lists bounded (format.h), shard names plain file
/// names (no '/', not '.' or '..'), each named once.
Manifest read_manifest(const std::string& dir);
/// read_manifest() of an HDF5 file image held in memory (fuzzing, tests); `name` names it in
/// errors.
Manifest read_manifest_image(const std::string& name, const std::string& image);

/// Compact binary form, for broadcasting a manifest read by one rank.
std::string serialize_manifest(const Manifest& manifest);
Manifest deserialize_manifest(const std::string& bytes);

}  // namespace shardload
