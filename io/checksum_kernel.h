// The XXH3-64 kernels behind checksum.h: the same function compiled for several instruction
// sets (checksum_kernel.inc), of which checksum.cpp picks the widest the CPU runs. Every kernel
// computes the same digests; only their speed differs (AVX2 hashes about twice as fast as the
// SSE2 baseline of an x86-64 build; AVX-512 was measured only 4 % faster than AVX2 here).
#pragma once

#include <cstddef>
#include <cstdint>

namespace shardload::xxh3 {

/// Bytes and alignment of a streaming state (XXH3_state_t, checked where it is defined).
inline constexpr size_t kStateBytes = 640;
inline constexpr size_t kStateAlign = 64;

struct Kernel {
  const char* name;
  uint64_t (*hash)(const void* data, size_t n);
  void (*reset)(void* state);
  void (*update)(void* state, const void* data, size_t n);
  uint64_t (*digest)(const void* state);
};

extern const Kernel kBaseline;  ///< the build's own target (SSE2 on x86-64)
/// checksum_avx2.cpp, compiled with -mavx2 (x86-64 builds; used where the CPU has AVX2).
extern const Kernel kAvx2;

}  // namespace shardload::xxh3
