// libFuzzer target: where the tensors of a torch.save file lie, found from its zip directory and
// data.pkl without reading any storage (what a load of a .pt CKPT reads on each rank). Every
// view it accepts must lie inside its zip member, inside the file.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/error.h"
#include "io/file_bytes.h"
#include "io/pt_layout.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto file =
      shardload::FileBytes::from_image(std::string(reinterpret_cast<const char*>(data), size));
  for (const char* select : {"", "."}) {
    try {
      const shardload::PtLayout layout = shardload::read_pt_layout(file, select);
      for (const auto& t : layout.tensors) {
        if (t.record_pos > size || t.record_bytes > size - t.record_pos) __builtin_trap();
        if (t.contiguous() && t.nbytes() > 0 &&
            (t.data_pos() < t.record_pos ||
             t.data_pos() + t.nbytes() > t.record_pos + t.record_bytes)) {
          __builtin_trap();
        }
      }
    } catch (const shardload::Error&) {
    }
  }
  return 0;
}
