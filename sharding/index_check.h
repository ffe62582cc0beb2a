// Consistency of a checkpoint's global index: pure checks over index rows, no files.
#pragma once

#include <string>
#include <vector>

#include "core/chunk_record.h"

namespace shardload {

/// Checks that the index is consistent: for each key the same dtype and global shape in every
/// chunk, every chunk inside the global shape, no two chunks overlapping, nbytes matching. Throws
/// FormatError naming the key and the files (file_names[chunk.file]).
void validate_index(const std::vector<ChunkRecord>& index,
                    const std::vector<std::string>& file_names);

}  // namespace shardload
