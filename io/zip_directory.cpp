#include "io/zip_directory.h"

#include <algorithm>
#include <cctype>
#include <string_view>
#include <unordered_set>

#include "core/error.h"
#include "io/key_text.h"

namespace shardload {
namespace {

constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint32_t kEnd64LocatorSignature = 0x07064b50;
constexpr uint32_t kEnd64Signature = 0x06064b50;
constexpr uint32_t kCentralSignature = 0x02014b50;
constexpr uint32_t kLocalSignature = 0x04034b50;
constexpr uint64_t kEndSize = 22;
constexpr uint64_t kEnd64LocatorSize = 20;
constexpr uint64_t kEnd64Size = 56;
constexpr uint64_t kCentralSize = 46;
constexpr uint64_t kLocalSize = 30;
constexpr uint32_t kMax32 = 0xFFFFFFFF;

[[noreturn]] void fail(const std::string& what) { throw FormatError("zip: " + what); }

uint64_t le(const char* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= uint64_t{static_cast<uint8_t>(p[i])} << (8 * i);
  return v;
}

/// a + b, failing on overflow.
uint64_t add(uint64_t a, uint64_t b, const char* what) {
  uint64_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) fail(std::string(what) + " overflows");
  return r;
}

/// Offset of the end-of-central-directory record, found as miniz finds it: the last signature
/// with a whole record after it, within the last 64 KiB + 22 bytes.
uint64_t find_end_record(uint64_t file_size, const ZipReadAt& read_at) {
  if (file_size < kEndSize) fail("file too short for a zip archive");
  const uint64_t span = std::min<uint64_t>(file_size, 0xFFFF + kEndSize + 4096);
  std::string tail(span, '\0');
  read_at(file_size - span, tail.data(), span);
  for (uint64_t i = span - kEndSize + 1; i-- > 0;) {
    if (le(tail.data() + i, 4) == kEndSignature) return file_size - span + i;
  }
  fail("no end of central directory record (not a zip archive, or truncated)");
}

}  // namespace

std::vector<ZipMember> scan_zip_directory(uint64_t file_size, const ZipReadAt& read_at,
                                          const ZipLimits& limits) {
  const uint64_t end_ofs = find_end_record(file_size, read_at);
  char end[kEndSize];
  read_at(end_ofs, end, kEndSize);
  if (le(end + 4, 2) != 0 || le(end + 6, 2) != 0) fail("multi-disk archives are not supported");
  uint64_t entries = le(end + 10, 2);
  uint64_t dir_size = le(end + 12, 4);
  uint64_t dir_ofs = le(end + 16, 4);
  if (le(end + 8, 2) != entries) fail("entry counts of the end record disagree");
  uint64_t dir_limit = end_ofs;  // the directory ends before the record that points to it

  // A ZIP64 locator right before the end record: miniz then takes the ZIP64 values.
  if (end_ofs >= kEnd64LocatorSize + kEnd64Size) {
    char loc[kEnd64LocatorSize];
    read_at(end_ofs - kEnd64LocatorSize, loc, kEnd64LocatorSize);
    if (le(loc, 4) == kEnd64LocatorSignature) {
      const uint64_t end64_ofs = le(loc + 8, 8);
      if (end64_ofs > end_ofs - kEnd64LocatorSize - kEnd64Size) {
        fail("ZIP64 end record at " + std::to_string(end64_ofs) + " lies outside the file");
      }
      char end64[kEnd64Size];
      read_at(end64_ofs, end64, kEnd64Size);
      if (le(end64, 4) != kEnd64Signature) fail("bad ZIP64 end record signature");
      if (le(end64 + 16, 4) != 0 || le(end64 + 20, 4) != 0) {
        fail("multi-disk archives are not supported");
      }
      entries = le(end64 + 32, 8);
      if (le(end64 + 24, 8) != entries) fail("entry counts of the ZIP64 end record disagree");
      dir_size = le(end64 + 40, 8);
      dir_ofs = le(end64 + 48, 8);
      dir_limit = end64_ofs;
    }
  }
  if (entries == 0) fail("the archive has no members");
  if (entries > limits.max_members) {
    fail("the archive declares " + std::to_string(entries) + " members, more than the limit of " +
         std::to_string(limits.max_members));
  }
  if (dir_ofs > dir_limit || dir_size > dir_limit - dir_ofs) {
    fail("central directory [" + std::to_string(dir_ofs) + ", +" + std::to_string(dir_size) +
         ") lies outside the file");
  }
  if (dir_size / kCentralSize < entries) {
    fail("central directory of " + std::to_string(dir_size) + " bytes cannot hold " +
         std::to_string(entries) + " members");
  }

  std::string dir(dir_size, '\0');
  read_at(dir_ofs, dir.data(), dir_size);
  std::vector<ZipMember> members;
  members.reserve(entries);
  std::unordered_set<std::string> folded_names;
  uint64_t pos = 0;
  for (uint64_t i = 0; i < entries; ++i) {
    const std::string where = "member " + std::to_string(i) + ": ";
    if (dir_size - pos < kCentralSize) fail(where + "central directory truncated");
    const char* h = dir.data() + pos;
    if (le(h, 4) != kCentralSignature) fail(where + "bad central directory signature");
    const auto flags = static_cast<uint16_t>(le(h + 8, 2));
    ZipMember m;
    m.method = static_cast<uint16_t>(le(h + 10, 2));
    m.compressed_size = le(h + 20, 4);
    m.size = le(h + 24, 4);
    const uint64_t name_len = le(h + 28, 2);
    const uint64_t extra_len = le(h + 30, 2);
    const uint64_t comment_len = le(h + 32, 2);
    uint64_t header_ofs = le(h + 42, 4);
    const uint64_t record = kCentralSize + name_len + extra_len + comment_len;
    if (dir_size - pos < record) fail(where + "central directory truncated");
    m.name.assign(h + kCentralSize, name_len);
    const std::string who = "member " + quote_text(m.name, 100) + ": ";

    // ZIP64 extended information: the 64-bit values, in this order, of the fields at 2^32-1.
    if (m.size == kMax32 || m.compressed_size == kMax32 || header_ofs == kMax32) {
      std::string_view extra(h + kCentralSize + name_len, extra_len);
      bool found = false;
      while (extra.size() >= 4) {
        const uint64_t id = le(extra.data(), 2);
        const uint64_t len = le(extra.data() + 2, 2);
        if (extra.size() - 4 < len) fail(who + "extra field truncated");
        if (id == 1) {
          std::string_view field = extra.substr(4, len);
          for (uint64_t* v : {&m.size, &m.compressed_size, &header_ofs}) {
            if (*v != kMax32) continue;
            if (field.size() < 8) fail(who + "ZIP64 field truncated");
            *v = le(field.data(), 8);
            field.remove_prefix(8);
          }
          found = true;
          break;
        }
        extra.remove_prefix(4 + len);
      }
      if (!found) fail(who + "sizes of 2^32-1 without a ZIP64 field");
    }
    if (flags & 1) fail(who + "encrypted members are not supported");
    if (m.method == 0) {
      if (m.compressed_size != m.size) {
        fail(who + "stored member declares " + std::to_string(m.size) + " bytes but holds " +
             std::to_string(m.compressed_size));
      }
    } else if (m.method == 8) {
      uint64_t most = 0;
      if (__builtin_mul_overflow(m.compressed_size, limits.max_deflate_ratio, &most) ||
          m.size > most + 1024) {
        fail(who + "declares " + std::to_string(m.size) + " bytes from " +
             std::to_string(m.compressed_size) + " deflated bytes, more than deflate can produce");
      }
    } else {
      fail(who + "compression method " + std::to_string(m.method) + " is not supported");
    }

    // The local header and the data lie in the file, before the central directory.
    if (header_ofs > dir_ofs || dir_ofs - header_ofs < kLocalSize) {
      fail(who + "local header at " + std::to_string(header_ofs) + " lies outside the data area");
    }
    char local[kLocalSize];
    read_at(header_ofs, local, kLocalSize);
    if (le(local, 4) != kLocalSignature) fail(who + "bad local header signature");
    m.data_offset =
        add(add(header_ofs, kLocalSize, "offset"), le(local + 26, 2) + le(local + 28, 2), "offset");
    if (m.data_offset > dir_ofs || m.compressed_size > dir_ofs - m.data_offset) {
      fail(who + "data [" + std::to_string(m.data_offset) + ", +" +
           std::to_string(m.compressed_size) + ") runs past the data area (" +
           std::to_string(dir_ofs) + " bytes)");
    }
    std::string folded = m.name;
    std::transform(folded.begin(), folded.end(), folded.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    if (!folded_names.insert(std::move(folded)).second) {
      fail(who + "a second member of this name (names are compared ignoring case)");
    }
    members.push_back(std::move(m));
    pos += record;
  }
  return members;
}

}  // namespace shardload
