// libFuzzer target: the `.metadata` of a torch.distributed.checkpoint directory, unpickled with
// DCP's allowlist and checked into plain structs. Any exception other than shardload::FormatError,
// any sanitizer report, timeout or allocation beyond libFuzzer's limit is a finding; so is an
// accepted metadata that breaks what parse_dcp_metadata promises (io/dcp/dcp_metadata.h): plain
// file names inside the directory, storage ranges that do not overflow, chunks inside their
// tensor, at most kMaxDims dims, and a wire form that reads back to the same bytes.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.h"
#include "core/shape.h"
#include "io/dcp/dcp_metadata.h"

namespace {

bool plain_file_name(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name != shardload::kDcpMetadataName &&
         name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

void check_storage(const shardload::DcpMetadata& md, const shardload::DcpStorage& s) {
  if (s.file < 0 || static_cast<size_t>(s.file) >= md.files.size()) __builtin_trap();
  if (s.length > UINT64_MAX - s.offset) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  shardload::DcpMetadata md;
  try {
    md = shardload::parse_dcp_metadata(std::string_view(reinterpret_cast<const char*>(data), size),
                                       "fuzz");
  } catch (const shardload::FormatError&) {
    return 0;
  }
  for (const auto& name : md.files) {
    if (!plain_file_name(name)) __builtin_trap();
  }
  for (const auto& t : md.tensors) {
    if (t.size.size() > static_cast<size_t>(shardload::kMaxDims)) __builtin_trap();
    for (const int64_t d : t.size) {
      if (d < 0) __builtin_trap();
    }
    for (const auto& c : t.chunks) {
      if (c.offsets.size() != t.size.size() || c.sizes.size() != t.size.size()) __builtin_trap();
      for (size_t i = 0; i < t.size.size(); ++i) {
        if (c.offsets[i] < 0 || c.sizes[i] < 0 || c.offsets[i] > t.size[i] ||
            c.sizes[i] > t.size[i] - c.offsets[i]) {
          __builtin_trap();
        }
      }
      check_storage(md, c.storage);
    }
  }
  for (const auto& b : md.bytes_items) check_storage(md, b.storage);
  // The wire form that ranks share must read back to the same metadata.
  const std::string wire = shardload::serialize_dcp_metadata(md);
  if (shardload::serialize_dcp_metadata(shardload::deserialize_dcp_metadata(wire)) != wire) {
    __builtin_trap();
  }
  return 0;
}
