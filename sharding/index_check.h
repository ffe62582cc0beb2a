// Consistency of a checkpoint's global index: pure checks over index rows, no files.
#pragma once

#include <string>
#include <vector>

#include "core/chunk_record.h"

namespace shardload {

/// Checks that the index is consistent: for each key the same dtype and global shape in every
/// chunk, every chunk inside the global shape, element and byte counts that fit in int64, nbytes
/// matching, no two chunks overlapping. Throws FormatError naming the key and the files
/// (file_names[chunk.file]). Overlaps are found in O(n log n) per key of n chunks when the chunks
/// vary along at most two dimensions (splits along one dimension, 2-D grids); beyond that a
/// sweep with a work limit, which refuses (FormatError) rather than run away.
void validate_index(const std::vector<ChunkRecord>& index,
                    const std::vector<std::string>& file_names);

}  // namespace shardload
