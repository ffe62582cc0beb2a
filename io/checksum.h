// Chunk checksums: XXH3-64 (xxHash) over a chunk's bytes.
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardload {

/// XXH3-64 with seed 0 of `n` bytes, as Python's `xxhash.xxh3_64_intdigest(data)` computes it.
uint64_t checksum(const void* data, size_t n);

}  // namespace shardload
