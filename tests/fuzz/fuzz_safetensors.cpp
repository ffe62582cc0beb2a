// libFuzzer target: a .safetensors file's length prefix and JSON header. The input is the
// whole file. What the parser accepts must keep its promises (data inside the file, sizes
// matching shapes, no overlap); a broken promise traps.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "core/error.h"
#include "io/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  unsigned char prefix[8];
  std::memcpy(prefix, data, 8);
  const std::string_view file(reinterpret_cast<const char*>(data), size);
  try {
    const uint64_t n = shardload::safetensors_header_length(prefix, size);
    const uint64_t data_size = size - 8 - n;
    const auto header = shardload::parse_safetensors_header(file.substr(8, n), data_size);
    uint64_t previous_end = 0;
    for (const auto& e : header.entries) {
      if (e.begin > e.end || e.end > data_size) __builtin_trap();
      if (e.begin != e.end && e.begin < previous_end) __builtin_trap();
      if (e.begin != e.end) previous_end = e.end;
      if (e.shape.size() > static_cast<size_t>(shardload::kMaxDims)) __builtin_trap();
      uint64_t bytes = static_cast<uint64_t>(shardload::dtype_size(e.dtype));
      for (int64_t d : e.shape) {
        if (d < 0 || __builtin_mul_overflow(bytes, static_cast<uint64_t>(d), &bytes)) {
          __builtin_trap();
        }
      }
      if (bytes != e.end - e.begin) __builtin_trap();
    }
  } catch (const shardload::Error&) {
  }
  return 0;
}
