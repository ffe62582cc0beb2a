// XXH3-64: every kernel this build has (io/checksum_kernel.h) gives Python xxhash's digests, in
// one call and streamed in uneven pieces.
#include "io/checksum.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "io/checksum_kernel.h"

namespace shardload {
namespace {

TEST(Checksum, EveryKernelMatchesXxhashInOneCallAndStreamed) {
  std::vector<unsigned char> data(3 << 20);
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<unsigned char>((i * 131 + 7) % 251);
  // xxhash.xxh3_64_intdigest(bytes((i*131+7)%251 for i in range(n))) in Python: each of XXH3's
  // length classes (0, 1-3, 4-16, 17-128, 129-240, longer: one stripe, blocks).
  const std::vector<std::pair<size_t, uint64_t>> expected = {
      {0, 0x2d06800538d394c2},    {1, 0x4c5cca45d0f4811f},   {3, 0xd079cb72d5dc8fe3},
      {16, 0x945d7a2e39182d35},   {17, 0xd1539aca118a0247},  {128, 0x2edf21e7a54f582c},
      {129, 0x8bf7e91c7eb2f2d6},  {240, 0xc9860844b0ad495},  {241, 0x246c5fe4ed1436a3},
      {1000, 0x7b7c853ec74de9cd}, {3000, 0xa279279c194c2d82}};
  std::vector<const xxh3::Kernel*> kernels = {&xxh3::kBaseline};
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx2")) kernels.push_back(&xxh3::kAvx2);
#endif
  for (const auto& [n, digest] : expected) {
    EXPECT_EQ(checksum(data.data(), n), digest) << n << " bytes, " << checksum_kernel_name();
    for (const xxh3::Kernel* k : kernels) EXPECT_EQ(k->hash(data.data(), n), digest) << k->name;
  }
  // Long inputs: the kernels agree with each other and with their own streaming.
  const uint64_t whole = xxh3::kBaseline.hash(data.data(), data.size());
  for (const xxh3::Kernel* k : kernels) EXPECT_EQ(k->hash(data.data(), data.size()), whole);
  StreamingChecksum sum;
  for (size_t pos = 0, step = 1; pos < data.size(); pos += step, step = step * 3 + 1) {
    sum.update(data.data() + pos, std::min(step, data.size() - pos));
  }
  EXPECT_EQ(sum.digest(), whole);
}

}  // namespace
}  // namespace shardload
