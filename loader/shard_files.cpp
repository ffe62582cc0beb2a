#include "loader/shard_files.h"

#include "core/error.h"

namespace shardload {

ShardFiles::ShardFiles(CheckpointSource source, bool direct_io)
    : source_(std::move(source)), direct_io_(direct_io) {}

const ChunkReader& ShardFiles::get(int32_t file) {
  auto it = open_.find(file);
  if (it != open_.end()) return *it->second;
  const auto listed = source_.manifest.shard_files.size();
  if (file < 0 || file >= static_cast<int32_t>(listed)) {
    throw FormatError("In " + source_.dir + ": index refers to file #" + std::to_string(file) +
                      ", the " + source_.description + " lists " + std::to_string(listed));
  }
  std::unique_ptr<ChunkReader> reader = open_chunk_reader(source_, file);
  if (direct_io_) reader->enable_direct_io();  // refused (tmpfs): stays buffered, same bytes
  return *open_.emplace(file, std::move(reader)).first->second;
}

}  // namespace shardload
