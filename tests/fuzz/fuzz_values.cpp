// libFuzzer target: the plain values of a manifest (core/value.h's codec). The input is the
// `/values` dataset's bytes; whatever decodes must encode back to the same bytes and decode again
// to equal values.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "core/value.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  shardload::ValueList values;
  try {
    values = shardload::decode_values(bytes, "fuzz");
  } catch (const shardload::FormatError&) {
    return 0;
  }
  const std::string again = shardload::encode_values(values);
  if (again != bytes) __builtin_trap();
  const shardload::ValueList back = shardload::decode_values(again, "fuzz");
  if (back.size() != values.size()) __builtin_trap();
  for (size_t i = 0; i < back.size(); ++i) {
    if (back[i].first != values[i].first || !(back[i].second == values[i].second)) {
      __builtin_trap();
    }
    (void)back[i].second.repr(100);
  }
  return 0;
}
