// One data file of a torch.distributed.checkpoint directory (`__R_N.distcp`) as a checkpoint
// file of its own: the chunks `.metadata` places in it are its rows, each read in place from
// its item (a torch.save archive of the chunk; or an entry of the safetensors blob that DCP's
// safetensors serialization appends), nothing read but the bytes a load needs.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/value.h"
#include "io/chunk_reader.h"
#include "io/dcp/dcp_metadata.h"

namespace shardload {

/// Reads the data file number `dcp_file` of `metadata` (DcpMetadata::files), at `path`. An
/// item's archive is opened when its row is first prepared (or verified): its zip directory and
/// data.pkl (the restricted unpickler) must describe exactly the chunk the metadata promises
/// (dtype, sizes; any strides, read as the view they are), inside the item's byte range. DCP
/// files carry no checksums: `verify` checks bool values only, has_checksums() is false.
///
/// Thread-safety: as ChunkReader; items are opened under a lock.
class DcpReader final : public ChunkReader {
 public:
  /// Opens `path` (a regular file, without blocking). Throws FormatError naming it.
  DcpReader(const std::string& path, std::shared_ptr<const DcpMetadata> metadata, int32_t dcp_file);
  ~DcpReader() override;
  DcpReader(DcpReader&&) noexcept;
  DcpReader& operator=(DcpReader&&) noexcept;

  /// One row per non-empty chunk stored in this file: the key, dtype and global size of its
  /// tensor, the chunk's offsets and sizes, `data_offset` the item's first byte, `order` the
  /// tensor's position in the metadata.
  std::vector<ChunkRecord> read_index(int32_t file_number) const override;
  /// Opens the row's item and checks it against the row.
  void prepare(const ChunkRecord& row) const override;
  void read(const ChunkRecord& row, const Shape& offset_in_chunk, const Shape& shape, void* dst,
            bool verify) const override;
  void read_chunk(const ChunkRecord& row, void* dst, bool verify) const override;
  void read_chunks(std::span<const ChunkRecord* const> rows, void* dst, bool verify) const override;
  void verify_chunk(const ChunkRecord& row) const override;
  uint64_t stored_bytes(const ChunkRecord& row) const override;
  bool enable_direct_io() override;
  bool has_checksums() const override { return false; }
  const std::string& path() const override { return path_; }
  uint64_t file_size() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string path_;
};

/// The non-tensor items of `metadata` as plain values, read from the files of `dir`: each item's
/// torch.save archive is unpickled with plain data only (io/pickle_data.h); an object beyond
/// plain data is kept as its pickle's bytes (Value::Kind::kPickle: never run here, and only
/// unpickled by the Python layer where the caller allows pickles). Items whose planner_data
/// paths lead through a list index are joined into one value under the path before the first
/// index (`optim.param_groups.0.lr` ... become `optim.param_groups`, a list of dicts); other
/// keys stay as they are. Throws FormatError naming the file and key.
ValueList read_dcp_values(const std::string& dir, const DcpMetadata& metadata);

}  // namespace shardload
