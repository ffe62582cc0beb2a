#include "sharding/key_table.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace shardload {
namespace {

TEST(KeyTable, GrowsFromEmptyAndFindsEveryKey) {
  // 5,000 keys into a table sized for none: it grows nine times, and linear probing runs long
  // chains in its 16-slot start.
  std::vector<std::string> keys;
  for (int i = 0; i < 5000; ++i) keys.push_back("layers." + std::to_string(i) + ".weight");
  keys.emplace_back();  // the empty key is a key too
  KeyTable table;
  for (size_t i = 0; i < keys.size(); ++i) {
    const auto [value, fresh] = table.try_emplace(keys[i], static_cast<int32_t>(3 * i));
    ASSERT_TRUE(fresh) << keys[i];
    ASSERT_EQ(value, static_cast<int32_t>(3 * i));
  }
  EXPECT_EQ(table.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_EQ(table.find(keys[i]), static_cast<int32_t>(3 * i)) << keys[i];
    // A second insertion keeps the first value.
    const auto [value, fresh] = table.try_emplace(keys[i], 7);
    ASSERT_FALSE(fresh) << keys[i];
    ASSERT_EQ(value, static_cast<int32_t>(3 * i));
  }
  EXPECT_EQ(table.size(), keys.size());
  EXPECT_EQ(table.find("layers.5000.weight"), -1);
  EXPECT_EQ(table.find("layers.1.weigh"), -1);
  EXPECT_EQ(table.find(std::string_view("layers.1.weight\0", 16)), -1);
}

TEST(KeyTable, KeysAreComparedNotOnlyHashed) {
  // Views of one buffer that differ only past a shared prefix, sized as expected.
  const std::string text = "abcabcabd";
  KeyTable table(2);
  EXPECT_TRUE(table.try_emplace(std::string_view(text).substr(0, 3), 0).second);
  EXPECT_TRUE(table.try_emplace(std::string_view(text).substr(6, 3), 1).second);
  EXPECT_FALSE(table.try_emplace(std::string_view(text).substr(3, 3), 2).second);
  EXPECT_EQ(table.find("abc"), 0);
  EXPECT_EQ(table.find("abd"), 1);
  EXPECT_EQ(table.find("ab"), -1);
  EXPECT_EQ(table.size(), 2u);
}

TEST(KeyTable, KeysWhoseSlotHashesCollideStayApart) {
  // A slot keeps 32 bits of the key's hash: two keys that agree in those bits (found by search;
  // about 77,000 tries by the birthday bound) must still be two entries.
  std::unordered_map<uint32_t, std::string> seen;
  std::string a, b;
  for (int i = 0; i < 2000000 && a.empty(); ++i) {
    std::string key = "k." + std::to_string(i);
    const auto h = static_cast<uint32_t>(std::hash<std::string_view>{}(key));
    auto [it, fresh] = seen.try_emplace(h, key);
    if (!fresh) {
      a = it->second;
      b = key;
    }
  }
  ASSERT_FALSE(a.empty()) << "no two keys of 2,000,000 share 32 hash bits";
  KeyTable table;
  EXPECT_TRUE(table.try_emplace(a, 1).second);
  EXPECT_EQ(table.find(b), -1);
  EXPECT_TRUE(table.try_emplace(b, 2).second);
  EXPECT_EQ(table.find(a), 1);
  EXPECT_EQ(table.find(b), 2);
}

}  // namespace
}  // namespace shardload
