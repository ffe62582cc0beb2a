#include "loader/shard_files.h"

#include "core/error.h"

namespace shardload {

ShardFiles::ShardFiles(std::string dir, const Manifest& manifest)
    : dir_(std::move(dir)), manifest_(manifest) {}

const ShardReader& ShardFiles::get(int32_t file) {
  auto it = open_.find(file);
  if (it != open_.end()) return it->second;
  if (file < 0 || file >= static_cast<int32_t>(manifest_.shard_files.size())) {
    throw FormatError("In " + dir_ + ": index refers to shard file #" + std::to_string(file) +
                      ", the manifest lists " + std::to_string(manifest_.shard_files.size()));
  }
  return open_.emplace(file, ShardReader(path(file))).first->second;
}

std::string ShardFiles::path(int32_t file) const {
  return dir_ + "/" + manifest_.shard_files[static_cast<size_t>(file)];
}

}  // namespace shardload
