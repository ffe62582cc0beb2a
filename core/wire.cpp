#include "core/wire.h"

#include <cstring>

#include "core/error.h"

namespace shardload {

void WireWriter::str(std::string_view s) {
  u64(s.size());
  out_ += s;
}

void WireWriter::shape(const Shape& s) {
  u64(s.size());
  for (int64_t d : s) i64(d);
}

void WireWriter::u64s(std::span<const uint64_t> v) {
  u64(v.size());
  for (uint64_t x : v) u64(x);
}

void WireReader::fail(const std::string& item) const {
  std::string text = what_ + " is malformed: " + item + " at byte " + std::to_string(pos_) +
                     " of " + std::to_string(in_.size());
  if (from_peer_) throw CommError(text);
  throw FormatError(text);
}

void WireReader::fail_short(uint64_t n, const char* item) const {
  fail(std::string(item) + " needs " + std::to_string(n) + " bytes, only " +
       std::to_string(remaining()) + " remain");
}

uint8_t WireReader::u8(const char* item) {
  need(1, item);
  return static_cast<uint8_t>(in_[pos_++]);
}

std::string WireReader::bytes(uint64_t n, const char* item) {
  need(n, item);
  std::string s(in_.substr(pos_, n));
  pos_ += n;
  return s;
}

std::string WireReader::str(const char* item) { return bytes(u64(item), item); }

uint64_t WireReader::count(uint64_t min_bytes, const char* item) {
  const uint64_t n = u64(item);
  if (min_bytes > 0 && n > remaining() / min_bytes) {
    fail(std::string(item) + " says " + std::to_string(n) + " items, only " +
         std::to_string(remaining()) + " bytes remain");
  }
  return n;
}

Shape WireReader::shape(const char* item) {
  const uint64_t n = u64(item);
  if (n > static_cast<uint64_t>(kMaxDims)) {
    fail(std::string(item) + " of " + std::to_string(n) + " dimensions (at most " +
         std::to_string(kMaxDims) + ")");
  }
  need(n * 8, item);
  Shape s(n);
  for (auto& d : s) d = i64(item);
  return s;
}

std::vector<uint64_t> WireReader::u64s(const char* item) {
  const uint64_t n = count(8, item);
  std::vector<uint64_t> v(n);
  for (auto& x : v) x = u64(item);
  return v;
}

void WireReader::finish() const {
  if (!done()) fail(std::to_string(remaining()) + " bytes after the end");
}

}  // namespace shardload
