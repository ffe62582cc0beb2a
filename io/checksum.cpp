#include "io/checksum.h"

#include <xxhash.h>

namespace shardload {

uint64_t checksum(const void* data, size_t n) { return XXH3_64bits(data, n); }

}  // namespace shardload
