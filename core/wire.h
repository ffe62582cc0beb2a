// The one binary codec of the bytes that ranks exchange (index rows, declared layouts, what a
// checkpoint path is, a manifest) and that a checkpoint stores opaque (plain values): 8-byte
// little-endian words, a string as its length then its bytes. Decoding checks every length
// against the bytes that remain before anything is allocated from it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/shape.h"

namespace shardload {

/// Appends values to a byte string.
class WireWriter {
 public:
  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u64(uint64_t v) {
    char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<char>((v >> (8 * i)) & 0xff);
    out_.append(b, 8);
  }
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  /// The length, then the bytes.
  void str(std::string_view s);
  /// The number of extents, then each.
  void shape(const Shape& s);
  /// The count, then each word.
  void u64s(std::span<const uint64_t> v);
  /// Room for `n` more bytes (a caller that knows the size saves the growth's copies).
  void reserve(size_t n) { out_.reserve(out_.size() + n); }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

/// Reads what a WireWriter wrote. Every read that runs past the end, and every count that the
/// remaining bytes cannot hold, throws: FormatError "<what> is malformed: <item> ... at byte B of
/// N", or
/// CommError with the same text when the bytes came from another rank (`from_peer`).
class WireReader {
 public:
  WireReader(std::string_view bytes, std::string what, bool from_peer = false)
      : in_(bytes), what_(std::move(what)), from_peer_(from_peer) {}

  bool done() const { return pos_ == in_.size(); }
  uint64_t remaining() const { return in_.size() - pos_; }
  uint8_t u8(const char* item);
  uint64_t u64(const char* item) {
    need(8, item);
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(in_[pos_ + i])} << (8 * i);
    pos_ += 8;
    return v;
  }
  int64_t i64(const char* item) { return static_cast<int64_t>(u64(item)); }
  /// A length, then that many bytes.
  std::string str(const char* item);
  /// `n` bytes.
  std::string bytes(uint64_t n, const char* item);
  /// A count of items that each take at least `min_bytes` of what remains.
  uint64_t count(uint64_t min_bytes, const char* item);
  /// At most kMaxDims extents.
  Shape shape(const char* item);
  std::vector<uint64_t> u64s(const char* item);
  /// Throws unless every byte was read.
  void finish() const;
  /// Throws "<what> is malformed: <item> at byte B of N".
  [[noreturn]] void fail(const std::string& item) const;

 private:
  void need(uint64_t n, const char* item) const {
    if (n > remaining()) [[unlikely]]
      fail_short(n, item);
  }
  [[noreturn]] void fail_short(uint64_t n, const char* item) const;

  std::string_view in_;
  size_t pos_ = 0;
  std::string what_;
  bool from_peer_;
};

}  // namespace shardload
