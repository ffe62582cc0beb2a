#include <gtest/gtest.h>

#include <cstring>
#include <vector>

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

TEST(Shape, SmallVectorActsAsAVectorInPlaceAndOnTheHeap) {
  Shape a{1, 2, 3};
  Shape b = a;  // in place (up to kInline), then on the heap
  for (int64_t x : {4, 5, 6}) b.push_back(x);
  EXPECT_EQ(b, (Shape{1, 2, 3, 4, 5, 6}));
  EXPECT_GT(b.capacity(), Shape::kInline);
  Shape c = std::move(b);  // a heap array changes hands; the source is left empty
  EXPECT_TRUE(b.empty());
  EXPECT_EQ(c.size(), 6u);
  Shape d = std::move(a);  // extents in place are copied
  EXPECT_EQ(d, (Shape{1, 2, 3}));
  c = d;  // heap to the inline size: stays correct
  EXPECT_EQ(c, d);
  const std::vector<int64_t> v = c;
  EXPECT_EQ(Shape(v), d);
  c.insert(c.begin() + 1, c.begin(), c.end());  // from itself
  EXPECT_EQ(c, (Shape{1, 1, 2, 3, 2, 3}));
  c.erase(c.begin(), c.begin() + 3);
  EXPECT_EQ(c, (Shape{3, 2, 3}));
  c.resize(5, 9);
  EXPECT_EQ(c, (Shape{3, 2, 3, 9, 9}));
  EXPECT_LT((Shape{1, 2}), (Shape{1, 3}));
  EXPECT_LT((Shape{1}), (Shape{1, 0}));
  EXPECT_EQ(Shape(3, 7), (Shape{7, 7, 7}));
  SmallVector<uint64_t, 1> blocks;
  blocks.push_back(5);
  blocks.push_back(6);
  EXPECT_EQ(std::vector<uint64_t>(blocks), (std::vector<uint64_t>{5, 6}));
}

TEST(Shape, CheckedArithmeticRefusesOverflowInsteadOfWrapping) {
  const int64_t big = int64_t{1} << 40;
  EXPECT_EQ(numel({big, 1 << 20}), big << 20);
  EXPECT_THROW(numel({big, big}), FormatError);
  EXPECT_THROW(numel({INT64_MAX, 2}), FormatError);
  EXPECT_EQ(numel({big, big, 0}), 0);  // no elements, whatever the other extents
  EXPECT_THROW(numel({3, -1}), FormatError);
  try {
    numel({big, big});
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("[1099511627776, 1099511627776]"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(byte_size({3, 4}, 8), 96);
  EXPECT_THROW(byte_size({int64_t{1} << 61}, 8), FormatError);
  EXPECT_EQ(checked_mul(int64_t{3}, int64_t{-4}), -12);
  EXPECT_THROW(checked_mul(INT64_MAX, int64_t{2}), FormatError);
  EXPECT_THROW(checked_add(INT64_MAX, int64_t{1}), FormatError);
  EXPECT_THROW(checked_add(UINT64_MAX, uint64_t{1}), FormatError);
  EXPECT_THROW(checked_mul(uint64_t{1} << 32, uint64_t{1} << 32), FormatError);
  EXPECT_EQ(checked_add(uint64_t{1} << 63, (uint64_t{1} << 63) - 1), UINT64_MAX);
  EXPECT_EQ(block_count(0, 64), 0u);
  EXPECT_EQ(block_count(64, 64), 1u);
  EXPECT_EQ(block_count(65, 64), 2u);
  EXPECT_EQ(block_count(UINT64_MAX, 1 << 20), (UINT64_MAX >> 20) + 1);
  EXPECT_EQ(block_count(100, 0), 0u);
}

TEST(ChunkRecord, SerializeRoundTrip) {
  std::vector<ChunkRecord> records = {
      {"layers.0.w", DType::kBFloat16, {8, 4}, {4, 0}, {4, 4}, 1, "/c/0", 32, 0xdeadbeefcafeull},
      {"scalar", DType::kInt64, {}, {}, {}, 0, "/c/1", 8, 7},
      {"key with spaces/and.dots \xc3\xa9", DType::kBool, {0, 3}, {0, 0}, {0, 3}, 2, "", 0, 0},
      {"packed",
       DType::kFloat32,
       {300},
       {0},
       {300},
       1,
       "/packed/0",
       1200,
       9,
       4,
       4096,
       512,
       {1, 2, 3}},
  };
  const std::string bytes = serialize_records(records);
  std::vector<ChunkRecord> back = {records[1]};  // deserialize appends
  deserialize_records(bytes, back);
  ASSERT_EQ(back.size(), records.size() + 1);
  EXPECT_EQ(back[0], records[1]);
  for (size_t i = 0; i < records.size(); ++i) EXPECT_EQ(back[i + 1], records[i]);
  back.clear();
  deserialize_records(serialize_records({}), back);
  EXPECT_TRUE(back.empty());
}

TEST(ChunkRecord, TruncatedInputIsFormatError) {
  const std::string bytes =
      serialize_records({{"w", DType::kFloat32, {2}, {0}, {2}, 0, "/c/0", 8, 1}});
  std::vector<ChunkRecord> out;
  EXPECT_THROW(deserialize_records(std::string_view(bytes).substr(0, bytes.size() - 1), out),
               FormatError);
  // A count of block checksums larger than the bytes that follow is refused before allocating.
  std::string lying = serialize_records({{"w", DType::kFloat32, {2}, {0}, {2}, 0, "", 8, 1}});
  const uint64_t huge = uint64_t{1} << 60;
  std::memcpy(lying.data() + lying.size() - 8, &huge, 8);
  EXPECT_THROW(deserialize_records(lying, out), FormatError);
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
