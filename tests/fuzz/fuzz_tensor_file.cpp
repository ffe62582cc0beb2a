// libFuzzer target: the chunk readers of the single-file foreign formats (PtReader flat and with
// select ".", SafetensorsReader), read as the whole-file layer (io/tensor_file.h) reads them, which
// `convert`, `diff` and `load --into REF` run: the input is the whole file. Whatever they accept
// must keep their promises: each row's bytes are its shape's, every row prepared reads whole, and
// a bool row holds only 0 and 1 (checked on the stored bytes, before any copy).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/chunk_reader.h"
#include "io/file_bytes.h"
#include "io/pt/pt_reader.h"
#include "io/safetensors/safetensors_reader.h"

namespace {

// As read_all_tensors: rows beyond twice the file plus a floor are refused there; here skipped.
constexpr uint64_t kMostBytes = uint64_t{64} << 20;

void read_all(const shardload::ChunkReader& reader) {
  uint64_t total = 0;
  for (const shardload::ChunkRecord& row : reader.read_index(0)) {
    reader.prepare(row);
    const uint64_t want = static_cast<uint64_t>(shardload::numel(row.shape)) *
                          static_cast<uint64_t>(shardload::dtype_size(row.dtype));
    if (row.nbytes != want) __builtin_trap();
    if (row.nbytes > kMostBytes - total) continue;
    total += row.nbytes;
    std::vector<unsigned char> buf(row.nbytes);
    reader.read_chunk(row, buf.data(), /*verify=*/true);
    for (unsigned char b : buf) {
      if (row.dtype == shardload::DType::kBool && b > 1) __builtin_trap();
    }
  }
  (void)reader.extras();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string image(reinterpret_cast<const char*>(data), size);
  for (const char* select : {"", "."}) {
    try {
      read_all(shardload::PtReader(shardload::FileBytes::from_image(image), "fuzz.pt", select));
    } catch (const shardload::Error&) {
    }
  }
  try {
    read_all(shardload::SafetensorsReader(shardload::FileBytes::from_image(image), "fuzz"));
  } catch (const shardload::Error&) {
  }
  return 0;
}
