// A torch.save file as a checkpoint file of its own: each (selected) tensor is one chunk, read by
// pread from the zip member that holds its storage. Nothing is read but the bytes a load needs.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "io/chunk_reader.h"

namespace shardload {

class FileBytes;

/// Reads one torch.save (zip) file: its layout is read when the file is opened (pt_layout.h:
/// the zip directory, data.pkl by the restricted unpickler; no storage is read), the tensors of
/// the flat state dict or of the sub-dictionary `select` become rows. A tensor whose view is
/// contiguous is a byte range of the file; any other view (a transpose, a stride-0 expansion)
/// is gathered from the part of its storage it covers (memory: that part, at most the file's
/// size), its bool bytes checked where it covers them before anything is copied. The file is
/// opened without blocking and must be a regular file. The format has no per-tensor checksums:
/// `verify` checks nothing but bool values (exactly the stored bytes each view covers), and
/// has_checksums() is false.
///
/// Thread-safety: everything after construction is safe to call from several threads.
class PtReader final : public ChunkReader {
 public:
  /// Opens `path` read-only and reads its layout. Throws FormatError naming the path, UsageError
  /// when `select` names no dict of the file.
  PtReader(const std::string& path, const std::string& select);
  /// Reads the file `bytes` (an in-memory image, for fuzzing and tests); `name` names it.
  PtReader(FileBytes bytes, const std::string& name, const std::string& select);
  ~PtReader() override;
  PtReader(PtReader&&) noexcept;
  PtReader& operator=(PtReader&&) noexcept;

  /// One row per tensor in file order: offset zeros, `dataset` the storage's zip record,
  /// `data_offset` the file position of the view's first element, no checksums, `order`
  /// file_number * 2^32 + the tensor's position.
  std::vector<ChunkRecord> read_index(int32_t file_number) const override;
  /// Checks that the row is the file's tensor of that key: dtype, shape, position and size.
  void prepare(const ChunkRecord& row) const override;
  void read(const ChunkRecord& row, const Shape& offset_in_chunk, const Shape& shape, void* dst,
            bool verify) const override;
  void read_chunk(const ChunkRecord& row, void* dst, bool verify) const override;
  void read_chunks(std::span<const ChunkRecord* const> rows, void* dst, bool verify) const override;
  /// Reads the tensor through bounded memory (a view: the part of its storage it covers) and
  /// checks bool values: all there is to check.
  void verify_chunk(const ChunkRecord& row) const override;
  /// The bytes of the storage the tensor's view spans (a stride-0 expansion: few).
  uint64_t stored_bytes(const ChunkRecord& row) const override;
  bool enable_direct_io() override;
  bool has_checksums() const override { return false; }
  const std::string& path() const override { return path_; }

  /// What the selection took and left, one line each ("selected 'model': 12 tensors", the
  /// scalar leaves with their values, what is neither tensor nor scalar, tensors not selected),
  /// each starting "In <path>: "; empty without `select`.
  std::vector<std::string> notes() const override;
  /// The scalar leaves, what was skipped and the tensors not selected.
  FileExtras extras() const override;
  uint64_t file_size() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

}  // namespace shardload
