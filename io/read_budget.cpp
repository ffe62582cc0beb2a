#include "io/read_budget.h"

#include "core/error.h"

namespace shardload {

uint64_t parse_budget(uint64_t input_bytes) {
  uint64_t bytes = 0;
  if (__builtin_mul_overflow(input_bytes, kParseBytesPerInputByte, &bytes) ||
      __builtin_add_overflow(bytes, kParseFloorBytes, &bytes)) {
    return UINT64_MAX;
  }
  return bytes;
}

void ReadBudget::fail(uint64_t bytes, const char* item) const {
  throw FormatError(what_ + ": " + std::to_string(bytes) + " more bytes for " + item +
                    " would pass the limit of " + std::to_string(limit_) + " bytes (" +
                    std::to_string(used_) + " taken so far)");
}

}  // namespace shardload
