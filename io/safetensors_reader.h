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

  /// The header's `__metadata__`.
  const std::vector<std::pair<std::string, std::string>>& metadata() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

class FileBytes;

/// Reads rows whose bytes are the file's [data_offset, data_offset + nbytes) whole, back to back
/// into `dst`, with one read for each run of rows adjacent in the file (small tensors written
/// one after the other), then calls `each(row, bytes)` on each row's bytes (to check them).
/// For the readers of formats whose tensors are byte ranges (.safetensors, .pt).
void read_byte_ranges(const FileBytes& file, std::span<const ChunkRecord* const> rows, void* dst,
                      const std::function<void(const ChunkRecord&, char*)>& each);

}  // namespace shardload
