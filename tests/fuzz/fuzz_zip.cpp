// libFuzzer target: the zip central directory check that runs before LibTorch's zip reader
// opens a .pt file. The input is the whole file; what it accepts must lie inside the file.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "io/zip_directory.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const auto members =
        shardload::scan_zip_directory(size, [data, size](uint64_t offset, char* buf, size_t n) {
          if (offset > size || n > size - offset) throw shardload::FormatError("short read");
          std::memcpy(buf, data + offset, n);
        });
    for (const auto& m : members) {
      if (m.data_offset > size || m.compressed_size > size - m.data_offset) __builtin_trap();
      if (m.method == 0 && m.size != m.compressed_size) __builtin_trap();
    }
  } catch (const shardload::Error&) {
  }
  return 0;
}
