// The index table of a shard file (docs/FORMAT.md, "/index"): one row per chunk, one dataset per
// column, written and read whole. Reading checks every column before anything is allocated from
// it and every row before it is returned. Only io/ includes this header (it speaks HDF5).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <vector>

#include "core/chunk_record.h"

namespace shardload {
namespace h5 {
class VlenCheck;
}

/// Writes the index group `/index` of `file`: the columns of `rows` and, when `block_bytes` > 0,
/// the attribute `block_bytes` and the `block_checksums` column (every row must then carry its
/// blocks).
void write_index_table(hid_t file, const std::vector<ChunkRecord>& rows, uint64_t block_bytes);

/// Reads and checks the index of a shard file of format `version` and `file_size` bytes; each
/// row gets `file = file_number`. Throws FormatError naming the column or the key.
std::vector<ChunkRecord> read_index_table(hid_t file, int64_t version, uint64_t file_size,
                                          int32_t file_number, h5::VlenCheck& vlen);

}  // namespace shardload
