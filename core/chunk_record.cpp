#include "core/chunk_record.h"

#include <algorithm>

#include "core/error.h"
#include "core/wire.h"

namespace shardload {

uint64_t block_count(uint64_t nbytes, uint64_t block_bytes) {
  if (nbytes == 0 || block_bytes == 0) return 0;
  return (nbytes - 1) / block_bytes + 1;
}

namespace {

/// The fewest bytes a record takes on the wire: thirteen words (lengths and counts included).
constexpr uint64_t kMinRecordBytes = 13 * 8;

}  // namespace

std::string serialize_records(const std::vector<ChunkRecord>& records) {
  WireWriter w;
  size_t bytes = 8;
  for (const auto& r : records) {
    bytes +=
        kMinRecordBytes + r.key.size() + r.dataset.size() +
        8 * (r.global_shape.size() + r.offset.size() + r.shape.size() + r.block_checksums.size());
  }
  w.reserve(bytes);
  w.u64(records.size());
  for (const auto& r : records) {
    w.str(r.key);
    w.u64(static_cast<uint64_t>(r.dtype));
    w.shape(r.global_shape);
    w.shape(r.offset);
    w.shape(r.shape);
    w.i64(r.file);
    w.str(r.dataset);
    w.u64(r.nbytes);
    w.u64(r.checksum);
    w.i64(r.order);
    w.u64(r.data_offset);
    w.u64(r.block_bytes);
    w.u64s(r.block_checksums);
  }
  return w.take();
}

void deserialize_records(std::string_view bytes, std::vector<ChunkRecord>& out) {
  WireReader r(bytes, "serialized index");
  const uint64_t n = r.count(kMinRecordBytes, "record count");
  if (out.capacity() - out.size() < n) out.reserve(std::max(out.size() + n, 2 * out.capacity()));
  for (uint64_t i = 0; i < n; ++i) {
    ChunkRecord& c = out.emplace_back();
    c.key = r.str("key");
    const uint64_t dt = r.u64("dtype");
    if (dt >= kDTypeCount) r.fail("an unknown dtype");
    c.dtype = static_cast<DType>(dt);
    c.global_shape = r.shape("global shape");
    c.offset = r.shape("offset");
    c.shape = r.shape("shape");
    c.file = static_cast<int32_t>(r.i64("file"));
    c.dataset = r.str("dataset");
    c.nbytes = r.u64("nbytes");
    c.checksum = r.u64("checksum");
    c.order = r.i64("order");
    c.data_offset = r.u64("data offset");
    c.block_bytes = r.u64("block bytes");
    c.block_checksums.resize(r.count(8, "block checksums"));
    for (uint64_t& x : c.block_checksums) x = r.u64("block checksums");
  }
  r.finish();
}

}  // namespace shardload
