#include "io/checksum.h"

#define SHARDLOAD_XXH3_KERNEL kBaseline
#define SHARDLOAD_XXH3_NAME "baseline"
#include "io/checksum_kernel.inc"

namespace shardload {
namespace {

/// The widest kernel this CPU (and its OS) runs, chosen once.
const xxh3::Kernel& kernel() {
  static const xxh3::Kernel& chosen = []() -> const xxh3::Kernel& {
#if defined(SHARDLOAD_XXH3_DISPATCH)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return xxh3::kAvx2;
#endif
    return xxh3::kBaseline;
  }();
  return chosen;
}

}  // namespace

uint64_t checksum(const void* data, size_t n) { return kernel().hash(data, n); }

const char* checksum_kernel_name() { return kernel().name; }

struct StreamingChecksum::State {
  alignas(xxh3::kStateAlign) unsigned char bytes[xxh3::kStateBytes];
};

StreamingChecksum::StreamingChecksum() : state_(std::make_unique<State>()) {
  kernel().reset(state_->bytes);
}
StreamingChecksum::~StreamingChecksum() = default;

void StreamingChecksum::update(const void* data, size_t n) {
  if (n) kernel().update(state_->bytes, data, n);
}

uint64_t StreamingChecksum::digest() const { return kernel().digest(state_->bytes); }

}  // namespace shardload
