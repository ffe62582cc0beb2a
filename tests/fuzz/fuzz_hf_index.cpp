// libFuzzer target: a Hugging Face index (model.safetensors.index.json). What it accepts must
// be a weight map of checked keys naming plain .safetensors file names.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "io/safetensors/hf_index.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const shardload::HfIndex index =
        shardload::parse_hf_index(std::string_view(reinterpret_cast<const char*>(data), size));
    for (const auto& [key, file] : index.weight_map) {
      if (file < 0 || static_cast<size_t>(file) >= index.files.size()) __builtin_trap();
    }
    for (const auto& name : index.files) {
      if (!shardload::is_plain_file_name(name)) __builtin_trap();
    }
  } catch (const shardload::Error&) {
  }
  return 0;
}
