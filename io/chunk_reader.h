// The reader of one checkpoint file, whatever its format: a shardload shard file (HDF5), a
// .safetensors file, a torch.save file. The load's phases and the tools see only this interface:
// index rows out, verified (where the format has checksums) bytes of a row's box in.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/chunk_record.h"
#include "core/shape.h"

namespace shardload {

/// What a file holds besides its tensors, as whole-file reads report it (TensorFileContents).
struct FileExtras {
  /// Plain scalar leaves of a .pt file by dotted path, as Python prints them; a .safetensors
  /// file's `__metadata__`.
  std::vector<std::pair<std::string, std::string>> metadata;
  /// What is neither a tensor nor a plain scalar: dotted path and type. Never called.
  std::vector<std::pair<std::string, std::string>> skipped;
  /// Tensors outside the selection: the path of the container holding them, and how many.
  std::vector<std::pair<std::string, size_t>> other_tensors;
};

/// One open checkpoint file. A row's `file` is the file's number in its checkpoint; its `dataset`
/// and `data_offset` say, in the format's own terms, where its bytes are (an HDF5 dataset; a
/// byte position in the file for .safetensors and .pt files).
///
/// Thread-safety: read_index() and prepare() run on one thread. After prepare(row), read(),
/// read_chunk() and read_chunks() of that row may run concurrently from several threads.
class ChunkReader {
 public:
  ChunkReader() = default;
  virtual ~ChunkReader() = default;
  ChunkReader(ChunkReader&&) noexcept = default;
  ChunkReader& operator=(ChunkReader&&) noexcept = default;
  ChunkReader(const ChunkReader&) = delete;
  ChunkReader& operator=(const ChunkReader&) = delete;

  /// The file's rows, with `file` set to `file_number`, every size checked against the file.
  /// Throws FormatError naming the file and key.
  virtual std::vector<ChunkRecord> read_index(int32_t file_number) const = 0;
  /// Checks, before any byte of the row is used, that the row describes bytes of this file as
  /// the file itself does, and remembers where they are. Throws FormatError naming file and key.
  virtual void prepare(const ChunkRecord& row) const = 0;
  /// Reads the box (offset_in_chunk, shape) of the row's chunk into `dst` (contiguous, C order,
  /// little-endian). With `verify` and a format that has checksums, every byte was checked
  /// against them first. `dst` must be a staging buffer: on an error bytes may have been
  /// written to it.
  virtual void read(const ChunkRecord& row, const Shape& offset_in_chunk, const Shape& shape,
                    void* dst, bool verify) const = 0;
  /// Reads the whole chunk (see read()).
  virtual void read_chunk(const ChunkRecord& row, void* dst, bool verify) const = 0;
  /// Reads whole chunks back to back into `dst` in the given order (see read()).
  virtual void read_chunks(std::span<const ChunkRecord* const> rows, void* dst,
                           bool verify) const = 0;
  /// Reads the whole chunk through bounded memory and checks all the format allows (checksums,
  /// bool values). Throws FormatError naming the byte range.
  virtual void verify_chunk(const ChunkRecord& row) const = 0;
  /// From now on, large reads of this file bypass the page cache (O_DIRECT through an aligned
  /// bounce buffer: io/file_bytes.h). Returns false where the file system refuses it; reads then
  /// stay buffered. Call before reads start (not thread-safe against them).
  virtual bool enable_direct_io() = 0;
  /// The bytes of the file that hold the row's elements: its nbytes, but for a view of a
  /// storage (a .pt tensor that is a stride-0 expansion holds far fewer than it has). Call after
  /// prepare(row).
  virtual uint64_t stored_bytes(const ChunkRecord& row) const { return row.nbytes; }
  /// Whether the rows carry checksums that reads with `verify` check (false for formats without
  /// any, such as .safetensors).
  virtual bool has_checksums() const { return true; }
  /// The file's path, as errors name it.
  virtual const std::string& path() const = 0;
  /// What opening the file found worth telling besides its rows (a .pt file's selection: what
  /// it took and what it left), one line each; empty for most formats.
  virtual std::vector<std::string> notes() const { return {}; }
  /// What the file holds besides its rows (FileExtras); empty for most formats.
  virtual FileExtras extras() const { return {}; }
  /// The file's size in bytes.
  virtual uint64_t file_size() const = 0;
};

}  // namespace shardload
