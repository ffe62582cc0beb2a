// A .safetensors file as a checkpoint file of its own: each tensor is one chunk whose bytes are a
// byte range of the file, read by pread like a shard file's packed chunks.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "io/chunk_reader.h"

namespace shardload {

class FileBytes;

/// Reads one .safetensors file. Its header is read and checked when the file is opened (length,
/// nesting, dtypes, shapes, offsets inside the data section, no overlaps: safetensors_header.h),
/// before anything is allocated from it. The format has no checksums: `verify` checks nothing
/// but bool values (0 or 1), and has_checksums() is false.
///
/// Thread-safety: everything after construction is safe to call from several threads.
class SafetensorsReader final : public ChunkReader {
 public:
  /// Opens `path` read-only and reads its header. Throws FormatError naming the path.
  explicit SafetensorsReader(const std::string& path);
  /// Reads the file `bytes` (an in-memory image, for fuzzing and tests); `name` names it.
  SafetensorsReader(FileBytes bytes, const std::string& name);
  ~SafetensorsReader() override;
  SafetensorsReader(SafetensorsReader&&) noexcept;
  SafetensorsReader& operator=(SafetensorsReader&&) noexcept;

  /// One row per tensor, in the order of their data: offset zeros, shape the global shape,
  /// `data_offset` the file position of the first byte, `dataset` empty, no checksums, `order`
  /// file_number * 2^32 + the tensor's position (the files' order, then each file's).
  std::vector<ChunkRecord> read_index(int32_t file_number) const override;
  /// Checks that the row is the file's tensor of that key: dtype, shape, position and size.
  void prepare(const ChunkRecord& row) const override;
  void read(const ChunkRecord& row, const Shape& offset_in_chunk, const Shape& shape, void* dst,
            bool verify) const override;
  void read_chunk(const ChunkRecord& row, void* dst, bool verify) const override;
  void read_chunks(std::span<const ChunkRecord* const> rows, void* dst, bool verify) const override;
  /// Reads the tensor through bounded memory and checks bool values: all there is to check.
  void verify_chunk(const ChunkRecord& row) const override;
  bool enable_direct_io() override;
  bool has_checksums() const override { return false; }
  const std::string& path() const override { return path_; }

  uint64_t file_size() const override;
  /// The header's `__metadata__`.
  const std::vector<std::pair<std::string, std::string>>& metadata() const;
  /// `metadata` is the header's `__metadata__`.
  FileExtras extras() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

}  // namespace shardload
