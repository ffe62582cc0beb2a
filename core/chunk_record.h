// One row of a checkpoint's index: a stored chunk of a tensor.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/dtype.h"
#include "core/shape.h"
#include "core/small_vector.h"

namespace shardload {

/// A stored chunk: the part of the global tensor `key` that lives in one dataset of one shard
/// file. A replicated or unsplit tensor is one chunk whose offset is all zeros and whose shape
/// is the global shape.
struct ChunkRecord {
  std::string key;
  DType dtype = DType::kFloat32;
  Shape global_shape;
  Shape offset;           ///< where the chunk starts in the global tensor
  Shape shape;            ///< the chunk's extent
  int32_t file = 0;       ///< shard file number (index into the manifest's shard list)
  std::string dataset;    ///< HDF5 path of the chunk's dataset inside that file
  uint64_t nbytes = 0;    ///< numel(shape) * dtype_size(dtype)
  uint64_t checksum = 0;  ///< XXH3-64 of the chunk's bytes (little-endian, C order)
  int64_t order = 0;      ///< the key's position in the saved state dict (chunks of a key share it)
  /// Format v2: the chunk's byte offset inside `dataset` when that is a packed 1-D uint8 dataset
  /// holding several chunks back to back; 0 for a chunk with a dataset of its own.
  uint64_t data_offset = 0;
  /// Block checksums: XXH3-64 of each `block_bytes` bytes of the chunk (the last block shorter),
  /// ceil(nbytes / block_bytes) of them. block_bytes 0: the chunk has none (only `checksum`).
  uint64_t block_bytes = 0;
  /// One block (chunks up to block_bytes, most of a checkpoint's) is held in place.
  SmallVector<uint64_t, 1> block_checksums;

  bool operator==(const ChunkRecord&) const = default;
};

/// Number of blocks of `block_bytes` that `nbytes` bytes make (0 for 0 bytes or no blocks).
uint64_t block_count(uint64_t nbytes, uint64_t block_bytes);

/// Compact binary form of index rows, for exchanging them between ranks: their count, then each.
std::string serialize_records(const std::vector<ChunkRecord>& records);
/// Inverse of serialize_records; appends to `out`. Throws FormatError on malformed input, having
/// appended the rows decoded so far (and one partly decoded): a caller discards `out` then.
void deserialize_records(std::string_view bytes, std::vector<ChunkRecord>& out);

}  // namespace shardload
