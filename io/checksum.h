// Chunk and block checksums: XXH3-64 (xxHash, seed 0) over a chunk's bytes, in one call or
// streamed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace shardload {

/// XXH3-64 with seed 0 of `n` bytes, as Python's `xxhash.xxh3_64_intdigest(data)` computes it.
uint64_t checksum(const void* data, size_t n);

/// The instruction set checksum() runs with on this CPU: "avx2" or "baseline".
const char* checksum_kernel_name();

/// XXH3-64 with seed 0 over bytes handed in pieces: the digest equals checksum() of the
/// concatenation. One per thread (the state is not shared).
class StreamingChecksum {
 public:
  StreamingChecksum();
  ~StreamingChecksum();
  StreamingChecksum(const StreamingChecksum&) = delete;
  StreamingChecksum& operator=(const StreamingChecksum&) = delete;
  void update(const void* data, size_t n);
  uint64_t digest() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace shardload
