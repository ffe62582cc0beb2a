// The zip central directory check that runs before LibTorch's zip reader sees a .pt file.
#include "io/zip_directory.h"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"

namespace shardload {
namespace {

void put(std::string& out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

/// One member of a hand-made archive; the declared sizes default to the data's.
struct TestMember {
  std::string name;
  std::string data;
  uint16_t method = 0;
  uint16_t flags = 0;
  int64_t declared_size = -1;
  int64_t declared_compressed = -1;
  bool zip64 = false;  ///< sizes as 2^32-1 in the directory, the real ones in a ZIP64 field
};

struct TestZip {
  std::vector<TestMember> members;
  int64_t declared_entries = -1;
  bool zip64_end = false;  ///< ZIP64 end record and locator
};

std::string build(const TestZip& z) {
  std::string out;
  std::vector<uint64_t> offsets;
  for (const auto& m : z.members) {
    offsets.push_back(out.size());
    const uint64_t size = m.declared_size < 0 ? m.data.size() : m.declared_size;
    const uint64_t comp = m.declared_compressed < 0 ? m.data.size() : m.declared_compressed;
    put(out, 0x04034b50, 4);
    put(out, 20, 2);
    put(out, m.flags, 2);
    put(out, m.method, 2);
    put(out, 0, 4);  // time, date
    put(out, 0, 4);  // crc
    put(out, comp, 4);
    put(out, size, 4);
    put(out, m.name.size(), 2);
    put(out, 0, 2);
    out += m.name + m.data;
  }
  const uint64_t dir_ofs = out.size();
  for (size_t i = 0; i < z.members.size(); ++i) {
    const auto& m = z.members[i];
    const uint64_t size = m.declared_size < 0 ? m.data.size() : m.declared_size;
    const uint64_t comp = m.declared_compressed < 0 ? m.data.size() : m.declared_compressed;
    std::string extra;
    if (m.zip64) {
      put(extra, 1, 2);
      put(extra, 24, 2);
      put(extra, size, 8);
      put(extra, comp, 8);
      put(extra, offsets[i], 8);
    }
    put(out, 0x02014b50, 4);
    put(out, 45, 2);
    put(out, 45, 2);
    put(out, m.flags, 2);
    put(out, m.method, 2);
    put(out, 0, 4);
    put(out, 0, 4);
    put(out, m.zip64 ? 0xFFFFFFFF : comp, 4);
    put(out, m.zip64 ? 0xFFFFFFFF : size, 4);
    put(out, m.name.size(), 2);
    put(out, extra.size(), 2);
    put(out, 0, 2);  // comment
    put(out, 0, 2);  // disk
    put(out, 0, 2);  // internal attributes
    put(out, 0, 4);  // external attributes
    put(out, m.zip64 ? 0xFFFFFFFF : offsets[i], 4);
    out += m.name + extra;
  }
  const uint64_t dir_size = out.size() - dir_ofs;
  const uint64_t entries = z.declared_entries < 0 ? z.members.size() : z.declared_entries;
  if (z.zip64_end) {
    const uint64_t end64 = out.size();
    put(out, 0x06064b50, 4);
    put(out, 44, 8);
    put(out, 45, 2);
    put(out, 45, 2);
    put(out, 0, 4);
    put(out, 0, 4);
    put(out, entries, 8);
    put(out, entries, 8);
    put(out, dir_size, 8);
    put(out, dir_ofs, 8);
    put(out, 0x07064b50, 4);
    put(out, 0, 4);
    put(out, end64, 8);
    put(out, 1, 4);
  }
  put(out, 0x06054b50, 4);
  put(out, 0, 2);
  put(out, 0, 2);
  put(out, z.zip64_end ? 0xFFFF : entries, 2);
  put(out, z.zip64_end ? 0xFFFF : entries, 2);
  put(out, z.zip64_end ? 0xFFFFFFFF : dir_size, 4);
  put(out, z.zip64_end ? 0xFFFFFFFF : dir_ofs, 4);
  put(out, 0, 2);
  return out;
}

std::vector<ZipMember> scan(const std::string& file, const ZipLimits& limits = {}) {
  return scan_zip_directory(
      file.size(),
      [&file](uint64_t offset, char* buf, size_t n) {
        if (offset > file.size() || n > file.size() - offset) throw FormatError("short read");
        std::memcpy(buf, file.data() + offset, n);
      },
      limits);
}

std::string error_of(const std::string& file, const ZipLimits& limits = {}) {
  try {
    scan(file, limits);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "no exception";
}

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

TEST(ZipDirectory, ReadsMembersAndTheirDataOffsets) {
  const std::string file = build({{{"archive/data.pkl", "pickle"}, {"archive/data/0", "abcd"}}});
  const auto members = scan(file);
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members[1].name, "archive/data/0");
  EXPECT_EQ(members[1].size, 4u);
  EXPECT_EQ(file.substr(members[1].data_offset, 4), "abcd");
}

TEST(ZipDirectory, ReadsZip64Records) {
  TestZip z{{{"archive/data.pkl", "pickle", 0, 0, -1, -1, true}, {"archive/v", "3"}}};
  z.zip64_end = true;
  const auto members = scan(build(z));
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members[0].size, 6u);
  EXPECT_EQ(members[0].compressed_size, 6u);
}

TEST(ZipDirectory, RefusesSizesTheFileCannotHold) {
  // A stored member declaring more bytes than it holds (what data.pkl of 2^32-2 would be).
  EXPECT_CONTAINS(error_of(build({{{"a/data.pkl", "abc", 0, 0, 0xFFFFFFFE, -1}}})),
                  "stored member declares 4294967294 bytes but holds 3");
  // Deflated: more than deflate's 1032:1 can give.
  EXPECT_CONTAINS(error_of(build({{{"a/data.pkl", "abc", 8, 0, 1'000'000'000, -1}}})),
                  "more than deflate can produce");
  // Data running past the central directory.
  EXPECT_CONTAINS(error_of(build({{{"a/data/0", "abc", 0, 0, 5000, 5000}}})),
                  "runs past the data area");
  TestZip big{{{"a/data/0", "abc", 0, 0, -1, -1, true}}};
  big.members[0].declared_size = int64_t{1} << 40;
  big.members[0].declared_compressed = int64_t{1} << 40;
  EXPECT_CONTAINS(error_of(build(big)), "runs past the data area");
}

TEST(ZipDirectory, RefusesTooManyMembers) {
  const std::string file = build({{{"a/x", "1"}, {"a/y", "2"}, {"a/z", "3"}}});
  ZipLimits limits;
  limits.max_members = 2;
  EXPECT_CONTAINS(error_of(file, limits), "declares 3 members, more than the limit of 2");
  TestZip lying{{{"a/x", "1"}}};
  lying.declared_entries = 60000;
  EXPECT_CONTAINS(error_of(build(lying)), "cannot hold 60000 members");
}

TEST(ZipDirectory, RefusesAmbiguousEncryptedAndUnknownMembers) {
  EXPECT_CONTAINS(error_of(build({{{"a/data.pkl", "1"}, {"a/DATA.pkl", "2"}}})),
                  "a second member of this name");
  EXPECT_CONTAINS(error_of(build({{{"a/x", "1", 12}}})), "compression method 12");
  EXPECT_CONTAINS(error_of(build({{{"a/x", "1", 0, 1}}})), "encrypted");
}

TEST(ZipDirectory, RefusesGarbageAndTruncation) {
  const std::string file = build({{{"archive/data.pkl", "pickle"}}});
  EXPECT_CONTAINS(error_of(std::string(100, 'x')), "no end of central directory");
  EXPECT_CONTAINS(error_of(file.substr(0, 10)), "too short");
  for (size_t cut = 1; cut < file.size(); ++cut) {
    EXPECT_THROW(scan(file.substr(0, cut)), FormatError) << cut;
  }
  // Every single flipped byte either still scans or is a FormatError, never anything else.
  for (size_t i = 0; i < file.size(); ++i) {
    std::string bad = file;
    bad[i] = static_cast<char>(bad[i] ^ 0xFF);
    try {
      scan(bad);
    } catch (const FormatError&) {
    }
  }
}

}  // namespace
}  // namespace shardload
