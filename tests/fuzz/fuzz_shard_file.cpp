// libFuzzer target: the input is an HDF5 file image, opened in memory (core driver) as a manifest
// and as a shard file: manifest checks, index read and validation, then every chunk prepared and
// read whole, in part, coalesced and streamed through verification. Any crash, sanitizer report
// or exception other than shardload::Error is a finding.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/h5/manifest.h"
#include "io/h5/shard_file.h"
#include "sharding/index_check.h"

using namespace shardload;

// HDF5 (not instrumented, not ours) allocates sizes it reads from the file and handles a failed
// allocation as an error, as it does in production where malloc returns null: let ASan do the
// same instead of aborting on the request.
extern "C" const char* __asan_default_options() {
  return "allocator_may_return_null=1:max_allocation_size_mb=8192";
}
// HDF5 leaks on some of its error paths (an object header that fails to load in H5Fopen);
// allocations made inside HDF5 are its own.
extern "C" const char* __lsan_default_suppressions() { return "leak:libhdf5\n"; }

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string image(reinterpret_cast<const char*>(data), size);
  try {
    read_manifest_image("fuzz-manifest.h5", image);
  } catch (const Error&) {
  }
  try {
    ShardReader reader("fuzz-shard.h5", image);
    std::vector<ChunkRecord> rows = reader.read_index(0);
    try {
      validate_index(rows, {"fuzz-shard.h5"});
    } catch (const Error&) {
    }
    // read_index bounds the rows' bytes by the image's size: these buffers are small.
    std::vector<char> buffer;
    std::vector<const ChunkRecord*> readable;
    uint64_t total = 0;
    for (size_t i = 0; i < rows.size() && i < 64; ++i) {
      const ChunkRecord& row = rows[i];
      try {
        reader.prepare(row);
        buffer.resize(row.nbytes);
        reader.read_chunk(row, buffer.data(), true);
        readable.push_back(&row);
        total += row.nbytes;
        if (!row.shape.empty() && row.shape[0] > 1) {
          Shape offset(row.shape.size(), 0), shape = row.shape;
          offset[0] = 1;
          shape[0] -= 1;
          reader.read(row, offset, shape, buffer.data(), true);
          reader.read(row, offset, shape, buffer.data(), false);
        }
      } catch (const Error&) {
      }
      try {
        reader.verify_chunk(row);
      } catch (const Error&) {
      }
    }
    buffer.resize(total);
    reader.read_chunks(readable, buffer.data(), true);
  } catch (const Error&) {
  }
  return 0;
}
