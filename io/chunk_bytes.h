// Verified reads of one chunk's bytes by file offset: whole chunks, boxes (contiguous or
// hyperslabs), streamed through bounded memory, each byte checked against the chunk's block
// checksums or its whole-chunk checksum. No HDF5 here: the offsets were found and checked before
// (ShardReader::prepare), so everything in this unit is safe to run from several threads.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "core/chunk_record.h"
#include "core/shape.h"
#include "io/file_bytes.h"

namespace shardload {

/// Where one chunk's bytes lie in a file and what checks them.
struct ChunkBytes {
  const FileBytes* file = nullptr;
  uint64_t pos = 0;                  ///< file position of the chunk's first byte
  uint64_t nbytes = 0;               ///< numel(shape) * elem_size, checked
  int64_t elem_size = 1;             ///< bytes per element
  bool byte_swap = false;            ///< stored big-endian: swapped to little-endian after reading
  bool is_bool = false;              ///< elements must be 0 or 1
  uint64_t checksum = 0;             ///< XXH3-64 of the whole chunk (little-endian)
  uint64_t block_bytes = 0;          ///< 0: no block checksums
  const uint64_t* blocks = nullptr;  ///< block_count(nbytes, block_bytes) checksums
  /// A shard file's chunk: its dataset (a view of the index row's string, which outlives this)
  /// and data offset; empty for a tensor file's bytes. For name() only.
  std::string_view dataset;
  uint64_t data_offset = 0;

  /// What messages call it, made only when one is thrown: "chunk /data/3", "chunk /packed/0 at
  /// data offset 4096", or "tensor data at byte 1024" (a tensor file's).
  std::string name() const;
};

/// Bytes of scratch memory a read may use (rounded up to whole blocks when blocks are larger).
inline constexpr uint64_t kReadWindowBytes = uint64_t{8} << 20;

/// Reads the box (offset, shape) of a chunk of shape `chunk_shape` into `dst` (contiguous, C
/// order, little-endian). With `verify`, every byte placed was checked: block-checksummed chunks
/// read the whole blocks the box touches and check each; chunks without block checksums are
/// streamed whole through a bounded window and checked against the chunk checksum at the end.
/// Contract: `dst` is a staging buffer — on a mismatch this throws FormatError, but bytes may
/// already have been written to `dst` (always so for chunks without block checksums); the
/// caller must not let them reach a tensor. Memory used is bounded (kReadWindowBytes or one
/// block), whatever the chunk's size. Throws FormatError naming the byte range of a mismatch.
void read_box(const ChunkBytes& chunk, const Shape& chunk_shape, const Shape& offset,
              const Shape& shape, void* dst, bool verify);

/// Reads the whole chunk (nbytes) into `dst`, then finish_in_place().
void read_whole(const ChunkBytes& chunk, void* dst, bool verify);

/// For a whole chunk's raw file bytes already in `data`: swaps them to little-endian where
/// stored big-endian, checks them (all blocks, or the chunk checksum when it has no blocks) when
/// `verify`, and checks bool values. Same contract as read_box.
void finish_in_place(const ChunkBytes& chunk, void* data, bool verify);

/// Reads the whole chunk through bounded memory and checks everything: every block checksum,
/// the chunk checksum, bool values. Throws FormatError naming the first bad byte range.
void verify_streaming(const ChunkBytes& chunk);

/// Reads rows whose bytes are the file's [pos[i], pos[i] + nbytes) whole, back to back into
/// `dst`, with one read for each run of rows adjacent in the file (small tensors or packed chunks
/// written one after the other) of up to 256 KiB and a row, then calls `each(i, bytes)` on each
/// row's bytes of the run (to check them while they are in the core's cache).
/// Every reader's read_chunks: shard files pass the positions they located, the formats whose
/// tensors are byte ranges (.safetensors, .pt) each row's data_offset.
void read_byte_ranges(const FileBytes& file, std::span<const ChunkRecord* const> rows,
                      std::span<const uint64_t> pos, void* dst,
                      const std::function<void(size_t, char*)>& each);

}  // namespace shardload
