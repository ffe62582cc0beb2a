// core/value.h: the typed plain values of a training state, and their codec against hostile bytes.
#include "core/value.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "core/error.h"

namespace shardload {
namespace {

ValueList sample() {
  return {
      {"step", Value::of_int(-7)},
      {"lr", Value::of_float(-0.0)},
      {"nan", Value::of_float(std::numeric_limits<double>::quiet_NaN())},
      {"name", Value::of_str("cosine \xc3\xa9t\xc3\xa9")},
      {"blob", Value::of_bytes(std::string("\0\xff\x01", 3))},
      {"flags", Value::list({Value::of_bool(true), Value::none(), Value::of_bool(false)})},
      {"betas", Value::tuple({Value::of_float(0.9), Value::of_float(0.999)})},
      {"groups",
       Value::dict({Value::of_str("lr"), Value::list({Value::of_float(0.1)}),
                    Value::tuple({Value::of_int(1), Value::of_str("a")}), Value::dict({})})},
      {"opaque", Value::of_pickle("\x80\x04K\x03.")},
  };
}

TEST(Value, RoundTripKeepsKindsOrderAndBits) {
  const ValueList in = sample();
  const ValueList out = decode_values(encode_values(in), "t");
  ASSERT_EQ(out.size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ(out[i].first, in[i].first);
    EXPECT_TRUE(out[i].second == in[i].second) << in[i].first << ": " << out[i].second.repr();
  }
  EXPECT_TRUE(std::signbit(out[1].second.real));  // -0.0 stays -0.0
  EXPECT_TRUE(std::isnan(out[2].second.real));
  EXPECT_EQ(out[1].second.repr(), "-0.0");
  EXPECT_EQ(out[6].second.repr(), "(0.9, 0.999)");
  EXPECT_TRUE(out[8].second.holds_pickle());
  EXPECT_FALSE(out[7].second.holds_pickle());
  // A list and a tuple of the same items differ, and so do 1 and True.
  EXPECT_FALSE(Value::list({Value::of_int(1)}) == Value::tuple({Value::of_int(1)}));
  EXPECT_FALSE(Value::of_int(1) == Value::of_bool(true));
}

std::string u64(uint64_t x) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(x >> (8 * i));
  return s;
}

/// One value "k" whose encoding is `body` (a tag and what follows it).
std::string one(const std::string& body) { return "SLV1" + u64(1) + u64(1) + "k" + body; }

void expect_refused(const std::string& bytes, const std::string& needle) {
  try {
    decode_values(bytes, "file.h5");
    ADD_FAILURE() << "accepted; wanted an error with '" << needle << "'";
  } catch (const FormatError& e) {
    const std::string text = e.what();
    EXPECT_NE(text.find("file.h5"), std::string::npos) << text;
    EXPECT_NE(text.find(needle), std::string::npos) << text;
  }
}

TEST(Value, HostileBytesAreFormatErrorsNamingFileAndKey) {
  expect_refused("", "SLV1");
  expect_refused("SLV2" + u64(0), "SLV1");
  expect_refused("SLV1" + u64(uint64_t{1} << 60), "remain");   // a count past the bytes
  expect_refused(one(std::string("\x02", 1) + "abc"), "'k'");  // a truncated int
  expect_refused(one(std::string("\x04", 1) + u64(~uint64_t{0})), "remain");      // a huge str
  expect_refused(one(std::string("\x06", 1) + u64(uint64_t{1} << 62)), "items");  // a huge list
  expect_refused(one(std::string("\x08", 1) + u64(uint64_t{1} << 61)), "items");  // a huge dict
  expect_refused(one(std::string("\x01\x02", 2)), "bool");
  expect_refused(one(std::string("\x04", 1) + u64(2) + "\xc3\x28"), "UTF-8");
  expect_refused(one(std::string("\x0a", 1)), "tag");
  // A list as a dict key (unhashable), and keys that repeat, are empty or are not UTF-8.
  expect_refused(one(std::string("\x08", 1) + u64(1) + std::string("\x06", 1) + u64(0) +
                     std::string("\x00", 1)),
                 "hashable");
  expect_refused("SLV1" + u64(2) + u64(1) + "k" + std::string("\x00", 1) + u64(1) + "k" +
                     std::string("\x00", 1),
                 "twice");
  expect_refused("SLV1" + u64(1) + u64(0) + std::string("\x00\x00", 2), "key of 0 bytes");
  expect_refused("SLV1" + u64(1) + u64(1) + "\xff" + std::string("\x00", 1), "UTF-8");
  expect_refused(one(std::string("\x00", 1)) + "x", "after the last value");
  // Nesting past the bound: 65 lists inside each other (refused, not a deep recursion).
  std::string deep;
  for (int i = 0; i < 200; ++i) deep += std::string("\x06", 1) + u64(1);
  deep += std::string("\x00", 1);
  expect_refused(one(deep), "deeper");
}

TEST(Value, EveryTruncationIsRefused) {
  const std::string whole = encode_values(sample());
  for (size_t n = 0; n < whole.size(); ++n) {
    EXPECT_THROW(decode_values(whole.substr(0, n), "cut"), FormatError) << n;
  }
}

TEST(Value, ReprIsShortAndPythonLike) {
  EXPECT_EQ(Value::dict({Value::of_str("a"), Value::none()}).repr(), "{'a': None}");
  EXPECT_EQ(Value::tuple({Value::of_int(3)}).repr(), "(3,)");
  EXPECT_LE(Value::of_str(std::string(10000, 'x')).repr(40).size(), 60u);
  EXPECT_NE(Value::of_pickle("abc").repr().find("pickle"), std::string::npos);
}

}  // namespace
}  // namespace shardload
