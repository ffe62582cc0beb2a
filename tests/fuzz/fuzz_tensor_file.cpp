// libFuzzer target: the whole-file readers of the foreign formats (io/foreign_tensors.h), what
// `convert` and `load --into REF` run on a .pt or .safetensors file: the input is the whole file,
// read as a torch.save zip (flat, and with select ".") and as a .safetensors file. Whatever they
// accept must keep its promises: every tensor's bytes are its shape's, inside a live buffer,
// and a bool tensor holds only 0 and 1 (checked on the stored bytes, before any copy).
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "io/file_bytes.h"
#include "io/foreign_tensors.h"

namespace {

void check(const shardload::ForeignContents& contents) {
  for (const auto& t : contents.tensors) {
    const uint64_t want = static_cast<uint64_t>(shardload::numel(t.shape)) *
                          static_cast<uint64_t>(shardload::dtype_size(t.dtype));
    if (t.nbytes != want) __builtin_trap();
    if (t.nbytes > 0 && (!t.owner || !t.data)) __builtin_trap();
    uint8_t sum = 0;  // every byte is readable (ASan reports one that is not)
    for (uint64_t k = 0; k < t.nbytes; ++k) {
      const auto b = static_cast<uint8_t>(t.data[k]);
      if (t.dtype == shardload::DType::kBool && b > 1) __builtin_trap();
      sum = static_cast<uint8_t>(sum + b);
    }
    (void)sum;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file =
      shardload::FileBytes::from_image(std::string(reinterpret_cast<const char*>(data), size));
  for (const char* select : {"", "."}) {
    try {
      check(shardload::read_pt_tensors(file, select));
    } catch (const shardload::Error&) {
    }
  }
  try {
    check(shardload::read_safetensors_tensors(file));
  } catch (const shardload::Error&) {
  }
  return 0;
}
