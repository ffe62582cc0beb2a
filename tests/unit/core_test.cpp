#include <gtest/gtest.h>

#include "core/chunk_record.h"
#include "core/dtype.h"
#include "core/error.h"
#include "core/shape.h"

namespace shardload {
namespace {

TEST(DType, NamesAndSizesRoundTrip) {
  const std::vector<std::pair<DType, std::pair<std::string, int64_t>>> expected = {
      {DType::kFloat64, {"float64", 8}}, {DType::kFloat32, {"float32", 4}},
      {DType::kFloat16, {"float16", 2}}, {DType::kBFloat16, {"bfloat16", 2}},
      {DType::kInt64, {"int64", 8}},     {DType::kInt32, {"int32", 4}},
      {DType::kInt16, {"int16", 2}},     {DType::kInt8, {"int8", 1}},
      {DType::kUInt8, {"uint8", 1}},     {DType::kBool, {"bool", 1}},
  };
  for (const auto& [dtype, info] : expected) {
    EXPECT_EQ(dtype_name(dtype), info.first);
    EXPECT_EQ(dtype_size(dtype), info.second);
    EXPECT_EQ(dtype_from_name(info.first), dtype);
  }
  EXPECT_EQ(dtype_from_name("torch.float32"), std::nullopt);
  EXPECT_EQ(dtype_from_name(""), std::nullopt);
}

TEST(Shape, NumelAndText) {
  EXPECT_EQ(numel({}), 1);
  EXPECT_EQ(numel({3, 0, 5}), 0);
  EXPECT_EQ(numel({3, 4}), 12);
  EXPECT_EQ(shape_str({}), "[]");
  EXPECT_EQ(shape_str({3, 4}), "[3, 4]");
  EXPECT_EQ(torch_size_str({2}), "torch.Size([2])");
}

TEST(ChunkRecord, SerializeRoundTrip) {
  std::vector<ChunkRecord> records = {
      {"layers.0.w", DType::kBFloat16, {8, 4}, {4, 0}, {4, 4}, 1, "/c/0", 32, 0xdeadbeefcafeull},
      {"scalar", DType::kInt64, {}, {}, {}, 0, "/c/1", 8, 7},
      {"key with spaces/and.dots \xc3\xa9", DType::kBool, {0, 3}, {0, 0}, {0, 3}, 2, "", 0, 0},
  };
  const std::string bytes = serialize_records(records);
  std::vector<ChunkRecord> back = {records[1]};  // deserialize appends
  deserialize_records(bytes, back);
  ASSERT_EQ(back.size(), 4u);
  EXPECT_EQ(back[0], records[1]);
  for (size_t i = 0; i < records.size(); ++i) EXPECT_EQ(back[i + 1], records[i]);
  EXPECT_EQ(serialize_records({}), "");
}

TEST(ChunkRecord, TruncatedInputIsFormatError) {
  const std::string bytes =
      serialize_records({{"w", DType::kFloat32, {2}, {0}, {2}, 0, "/c/0", 8, 1}});
  std::vector<ChunkRecord> out;
  EXPECT_THROW(deserialize_records(std::string_view(bytes).substr(0, bytes.size() - 1), out),
               FormatError);
}

TEST(Error, KindsAndExitCodes) {
  EXPECT_EQ(UsageError("x").exit_code(), 2);
  EXPECT_EQ(VerdictError("x").exit_code(), 1);
  EXPECT_EQ(FormatError("x").exit_code(), 3);
  try {
    try {
      throw UsageError("bad");
    } catch (...) {
      rethrow_with_context("In f: ");
    }
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "In f: bad");
    return;
  }
  ADD_FAILURE() << "rethrow_with_context lost the kind";
}

}  // namespace
}  // namespace shardload
