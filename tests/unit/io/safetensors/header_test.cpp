// The torch-free safetensors header parser: limits, nesting, keys, offsets.
#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "io/safetensors_header.h"

namespace shardload {
namespace {

std::string error_of(const std::string& json, uint64_t data_size = 16) {
  try {
    parse_safetensors_header(json, data_size);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "no exception";
}

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

TEST(SafetensorsHeader, ParsesEntriesInDataOrderAndMetadata) {
  const auto h =
      parse_safetensors_header(R"({"b":{"dtype":"I32","shape":[],"data_offsets":[8,12]},)"
                               R"("__metadata__":{"format":"pt","epoch":"3"},)"
                               R"("a":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]}})",
                               12);
  ASSERT_EQ(h.entries.size(), 2u);
  EXPECT_EQ(h.entries[0].key, "a");
  EXPECT_EQ(h.entries[0].dtype, DType::kBFloat16);
  EXPECT_EQ(h.entries[0].shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(h.entries[1].begin, 8u);
  ASSERT_EQ(h.metadata.size(), 2u);
  EXPECT_EQ(h.metadata[1], (std::pair<std::string, std::string>{"epoch", "3"}));
}

TEST(SafetensorsHeader, RefusesDeepNestingWhileParsing) {
  const size_t n = 1'000'000;
  // A top-level array is refused at its first byte; objects are refused at the fourth level.
  EXPECT_CONTAINS(error_of(std::string(n, '[') + std::string(n, ']')), "not a JSON object");
  std::string objects;
  for (size_t i = 0; i < n; ++i) objects += R"({"a":)";
  objects += "1" + std::string(n, '}');
  EXPECT_CONTAINS(error_of(objects), "deeper than 3 levels");
  // Deep values where the parser used to print them in an error message.
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[)" + std::string(n, '[') +
                           std::string(n, ']') + R"(],"data_offsets":[0,4]}})"),
                  "deeper than 3 levels");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[[1]],"data_offsets":[0,4]}})"),
                  "deeper than 3 levels");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})"),
                  "shape entry is not a non-negative integer: -1");
}

TEST(SafetensorsHeader, RefusesDuplicateKeys) {
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})"),
                  "key 'w' twice");
  EXPECT_CONTAINS(
      error_of(R"({"w":{"dtype":"F32","dtype":"I32","shape":[1],"data_offsets":[0,4]}})"),
      "key 'dtype' twice");
}

TEST(SafetensorsHeader, ChecksKeysAndMetadata) {
  EXPECT_CONTAINS(error_of(R"({"a\u0000b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})"),
                  "key 'a\\x00b': contains a NUL character");
  EXPECT_CONTAINS(error_of("{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}"),
                  "not valid JSON");
  EXPECT_CONTAINS(error_of(R"({"__metadata__":{"epoch":3}})"),
                  "__metadata__ entry 'epoch' is a number, not a string");
  EXPECT_CONTAINS(error_of(R"({"__metadata__":"pt"})"), "__metadata__ is not a JSON object");
}

TEST(SafetensorsHeader, ChecksShapesWithCheckedArithmetic) {
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],)"
                           R"("data_offsets":[0,4]}})"),
                  "shape overflows");
  EXPECT_CONTAINS(
      error_of(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,4]}})"),
      "need more than 2^64");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[0,4611686018427387904,)"
                           R"(4611686018427387904],"data_offsets":[0,0]}})"),
                  "shape overflows");
  std::string dims = "1";
  for (int i = 0; i < 64; ++i) dims += ",1";
  EXPECT_CONTAINS(
      error_of(R"({"w":{"dtype":"F32","shape":[)" + dims + R"(],"data_offsets":[0,4]}})"),
      "shape of more than 64 dimensions");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"X9","shape":[1],"data_offsets":[0,4]}})"),
                  "unsupported dtype 'X9'");
}

TEST(SafetensorsHeader, ChecksDataOffsets) {
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[12,20]}})"),
                  "outside the 16 data bytes");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})"), "outside");
  EXPECT_CONTAINS(error_of(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("v":{"dtype":"F32","shape":[2],"data_offsets":[2,10]}})"),
                  "key 'v': data overlaps that of key 'w'");
  EXPECT_CONTAINS(
      error_of(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551615]}})"),
      "outside");
}

TEST(SafetensorsHeader, BoundsTheHeaderLength) {
  unsigned char prefix[8] = {};
  uint64_t n = kMaxSafetensorsHeaderBytes + 1;
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<unsigned char>(n >> (8 * i));
  EXPECT_THROW(safetensors_header_length(prefix, uint64_t{1} << 40), FormatError);
  n = 100;
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<unsigned char>(n >> (8 * i));
  EXPECT_EQ(safetensors_header_length(prefix, 108), 100u);
  EXPECT_THROW(safetensors_header_length(prefix, 107), FormatError);
  EXPECT_THROW(safetensors_header_length(prefix, 3), FormatError);
}

}  // namespace
}  // namespace shardload
