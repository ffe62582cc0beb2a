// Shard files (docs/FORMAT.md): chunks of 64 KiB and more in contiguous, unfiltered datasets of
// their own under /data; smaller chunks packed back to back into 1-D uint8 datasets under
// /packed (format v2); the index table under /index, read with one read per column. Tensor bytes
// are read by pread at the datasets' file offsets, checked against block or chunk checksums.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/chunk_record.h"
#include "io/chunk_reader.h"
#include "io/h5/format.h"

namespace shardload {

/// "shard-00003-of-00004.h5"
std::string shard_file_name(int shard, int num_shards);

/// How a ShardWriter lays chunks out (the defaults are the format's choices; tests shrink them).
struct ShardWriterOptions {
  uint64_t block_bytes = kDefaultBlockBytes;        ///< 0: no block checksums
  uint64_t pack_threshold = kDefaultPackThreshold;  ///< chunks below this are packed; 0: none
  uint64_t pack_bytes = kDefaultPackBytes;          ///< a packed dataset's size limit
};

/// Writes one shard file. Not collective: each writer owns its file.
class ShardWriter {
 public:
  /// Creates (truncates) `path`.
  ShardWriter(const std::string& path, int shard, int num_shards,
              const ShardWriterOptions& options = {});
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  /// Stores one chunk. `record` gives key, dtype, global_shape, offset and shape; `data` holds
  /// numel(shape) elements, contiguous, little-endian. Fills in dataset, data_offset, nbytes,
  /// checksum and block checksums and returns the completed row. Small chunks are buffered and
  /// written with their pack (each pack with one H5Dwrite).
  const ChunkRecord& add(ChunkRecord record, const void* data);
  /// Writes the last pack and the index, closes the file and flushes it to stable storage.
  void finish();
  /// Bytes of tensor data added so far.
  uint64_t data_bytes() const { return data_bytes_; }

 private:
  void flush_pack();

  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::vector<ChunkRecord> rows_;
  uint64_t data_bytes_ = 0;
  std::string path_;
};

/// Reads one shard file of format version 1 or 2.
///
/// Thread-safety: read_index() and prepare() call HDF5 and must run on one thread. After
/// prepare(row), read(), read_chunk() and read_chunks() of that row make no HDF5 call (pread and
/// xxHash only) and may run concurrently from several threads. A read of a row that was not
/// prepared prepares it first and is then not thread-safe.
class ShardReader : public ChunkReader {
 public:
  /// Opens `path` read-only and checks its format attributes. Throws FormatError naming the path.
  explicit ShardReader(const std::string& path);
  /// Opens an HDF5 file image held in memory (fuzzing, tests); `name` names it in errors.
  ShardReader(const std::string& name, std::string image);
  ~ShardReader() override;
  ShardReader(ShardReader&&) noexcept;
  ShardReader& operator=(ShardReader&&) noexcept;

  /// The format version of the file (1 or 2).
  int64_t format_version() const;
  /// The index rows, with `file` set to `file_number`, every column and row checked against the
  /// file (extents, byte counts, overflow). Throws FormatError naming the file and key.
  std::vector<ChunkRecord> read_index(int32_t file_number) const override;

  /// Checks the row's dataset before any of its bytes are used — a hard link inside the file to
  /// a contiguous dataset without filters or external storage, whose element type is exactly the
  /// row's dtype (or, for a packed chunk, a 1-D uint8 dataset that holds data_offset + nbytes),
  /// whose shape is the row's, whose bytes lie inside the file — and remembers where the bytes
  /// are. Datasets are looked up once (packed chunks share one lookup). Not thread-safe.
  void prepare(const ChunkRecord& row) const override;

  /// Reads the box (offset_in_chunk, shape) of the chunk into `dst` (contiguous, C order,
  /// little-endian). With `verify`, every byte was checked against the row's block checksums (or
  /// its chunk checksum, streaming the whole chunk through bounded memory when it has none).
  /// Contract: `dst` must be a staging buffer, never a tensor: on a mismatch this throws
  /// FormatError naming the file, the key and the byte range, but bytes may already have been
  /// written to `dst`. Memory used stays bounded whatever the chunk's size.
  void read(const ChunkRecord& row, const Shape& offset_in_chunk, const Shape& shape, void* dst,
            bool verify) const override;
  /// Reads the whole chunk (see read()).
  void read_chunk(const ChunkRecord& row, void* dst, bool verify) const override;
  /// Reads whole chunks back to back into `dst` in the given order (sum of their nbytes);
  /// chunks adjacent in the file are read with one pread. Same checks and contract as read().
  void read_chunks(std::span<const ChunkRecord* const> rows, void* dst, bool verify) const override;
  /// Reads the whole chunk through bounded memory and checks every block checksum, the chunk
  /// checksum and bool values (the `verify` command). Throws FormatError naming the byte range.
  void verify_chunk(const ChunkRecord& row) const override;

  bool enable_direct_io() override;
  const std::string& path() const override { return path_; }
  uint64_t file_size() const override;
  /// Reads of tensor bytes made so far (pread calls), for tests and benchmarks.
  uint64_t read_calls() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

}  // namespace shardload
