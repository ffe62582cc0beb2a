// Shard files of format v1 (docs/FORMAT.md): one contiguous, unfiltered dataset per chunk under
// /data, and an index table under /index read with one read per column.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/chunk_record.h"

namespace shardload {

/// Format name and version written into every shard file and the manifest.
inline constexpr const char* kFormatName = "shardload";
inline constexpr int64_t kFormatVersion = 1;

/// "shard-00003-of-00004.h5"
std::string shard_file_name(int shard, int num_shards);

/// Writes one shard file. Not collective: each writer owns its file.
class ShardWriter {
 public:
  /// Creates (truncates) `path`.
  ShardWriter(const std::string& path, int shard, int num_shards);
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  /// Stores one chunk. `record` gives key, dtype, global_shape, offset and shape; `data` holds
  /// numel(shape) elements, contiguous, little-endian. Fills in dataset, nbytes and checksum and
  /// returns the completed row.
  const ChunkRecord& add(ChunkRecord record, const void* data);
  /// Writes the index, closes the file and flushes it to stable storage.
  void finish();
  /// Bytes of tensor data written so far.
  uint64_t data_bytes() const { return data_bytes_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<ChunkRecord> rows_;
  uint64_t data_bytes_ = 0;
  std::string path_;
};

/// Reads one shard file.
class ShardReader {
 public:
  /// Opens `path` read-only and checks its format attributes. Throws FormatError naming the path.
  explicit ShardReader(const std::string& path);
  ~ShardReader();
  ShardReader(ShardReader&&) noexcept;
  ShardReader& operator=(ShardReader&&) noexcept;

  /// The index rows, with `file` set to `file_number`.
  std::vector<ChunkRecord> read_index(int32_t file_number) const;
  /// Reads the box (offset_in_chunk, shape) of the chunk into `dst` (contiguous, C order) — a
  /// hyperslab when the box is smaller than the chunk. With `verify` and a whole-chunk box, the
  /// bytes are checked against the row's checksum. Throws FormatError naming file and key.
  void read(const ChunkRecord& row, const Shape& offset_in_chunk, const Shape& shape, void* dst,
            bool verify) const;
  /// Reads the whole chunk (see read()).
  void read_chunk(const ChunkRecord& row, void* dst, bool verify) const;
  const std::string& path() const { return path_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

}  // namespace shardload
