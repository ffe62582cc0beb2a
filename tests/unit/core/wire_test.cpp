// The one wire codec (core/wire.h) and what goes over it: every dtype and every kind of
// declaration crosses it unchanged, and every truncation of it is refused.
#include "core/wire.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/chunk_record.h"
#include "core/dtype.h"
#include "core/error.h"
#include "sharding/declared_layouts.h"

namespace shardload {
namespace {

TEST(Wire, EveryDtypeCrossesInIndexRowsAndDeclarations) {
  std::vector<ChunkRecord> rows;
  std::vector<Declaration> decls;
  for (uint64_t d = 0; d < kDTypeCount; ++d) {
    const auto dtype = static_cast<DType>(d);
    ChunkRecord row;
    row.key = std::string(dtype_name(dtype));
    row.dtype = dtype;
    row.global_shape = {4, 2};
    row.offset = {2, 0};
    row.shape = {2, 2};
    row.nbytes = static_cast<uint64_t>(4 * dtype_size(dtype));
    row.block_checksums = {d, d + 1};
    rows.push_back(row);
    Declaration decl;
    decl.key = row.key;
    decl.dtype = dtype;
    decl.local_shape = {2, 2};
    decl.kind = static_cast<Declaration::Kind>(d % 3);
    if (decl.kind == Declaration::Kind::kShard) {
      decl.global_shape = {4, 2};
      decl.offset = {2, 0};
    } else if (decl.kind == Declaration::Kind::kSplit) {
      decl.split_dim = 1;
      decl.group = {0, 3, 5};
    }
    decls.push_back(decl);
  }
  std::vector<ChunkRecord> back;
  deserialize_records(serialize_records(rows), back);
  EXPECT_EQ(back, rows);
  const std::vector<Declaration> decoded = decode_layout(encode_layout(decls, 3));
  ASSERT_EQ(decoded.size(), decls.size());
  for (size_t i = 0; i < decls.size(); ++i) {
    EXPECT_EQ(decoded[i].dtype, decls[i].dtype) << decls[i].key;
    EXPECT_EQ(decoded[i].kind, decls[i].kind) << decls[i].key;
  }
}

TEST(Wire, EveryTruncationAndAnUnknownDtypeAreRefused) {
  ChunkRecord row;
  row.key = "w";
  row.global_shape = row.shape = {3};
  row.offset = {0};
  const std::string whole = serialize_records({row});
  for (size_t n = 1; n < whole.size(); ++n) {
    std::vector<ChunkRecord> out;
    EXPECT_THROW(deserialize_records(whole.substr(0, n), out), FormatError) << n;
  }
  std::string bad = whole;
  bad[8 + 8 + 1] = static_cast<char>(kDTypeCount);  // after the count and the 1-byte key
  std::vector<ChunkRecord> out;
  try {
    deserialize_records(bad, out);
    ADD_FAILURE() << "an unknown dtype was read";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("an unknown dtype"), std::string::npos) << e.what();
  }
  WireReader r(std::string(3, '\0'), "a test message");
  try {
    r.u64("a word");
    ADD_FAILURE() << "read past the end";
  } catch (const FormatError& e) {
    EXPECT_EQ(std::string(e.what()),
              "a test message is malformed: a word needs 8 bytes, only 3 remain at byte 0 of 3");
  }
}

}  // namespace
}  // namespace shardload
