#include "sharding/declared_layouts.h"

#include <climits>
#include <cstring>
#include <unordered_map>

#include "core/error.h"

namespace shardload {
namespace {

// Little-endian 8-byte words (every platform we build for); a string is its length, then bytes.
void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
void put_shape(std::string& out, const Shape& s) {
  put_u64(out, s.size());
  for (int64_t d : s) put_u64(out, static_cast<uint64_t>(d));
}

constexpr uint64_t kMaxDims = 64;

class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  bool done() const { return pos_ == s_.size(); }
  uint64_t u64(const char* what) {
    if (s_.size() - pos_ < 8) fail(what);
    uint64_t v;
    std::memcpy(&v, s_.data() + pos_, 8);
    pos_ += 8;
    return v;
  }
  std::string str(const char* what) {
    const uint64_t n = u64(what);
    if (n > s_.size() - pos_) fail(what);
    std::string out(s_.substr(pos_, n));
    pos_ += n;
    return out;
  }
  Shape shape(const char* what) {
    const uint64_t n = u64(what);
    if (n > kMaxDims) fail(what);
    Shape out(n);
    for (auto& d : out) d = static_cast<int64_t>(u64(what));
    return out;
  }
  [[noreturn]] void fail(const char* what) const {
    throw CommError("malformed declaration exchange: bad " + std::string(what) + " at byte " +
                    std::to_string(pos_) + " of " + std::to_string(s_.size()));
  }

 private:
  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace

std::string encode_layout(const std::vector<Declaration>& declarations, int rank) {
  std::string out;
  for (const Declaration& d : declarations) {
    put_u64(out, d.key.size());
    out += d.key;
    put_u64(out, static_cast<uint64_t>(d.dtype));
    put_u64(out, static_cast<uint64_t>(d.kind));
    put_shape(out, d.local_shape);
    // Only what the kind uses: a replicated tensor's global shape is its local shape.
    if (d.kind == Declaration::Kind::kShard) {
      put_shape(out, d.global_shape);
      put_shape(out, d.offset);
    } else if (d.kind == Declaration::Kind::kSplit) {
      put_u64(out, static_cast<uint64_t>(d.split_dim));
      put_u64(out, d.group.size());
      for (int m : d.group) put_u64(out, static_cast<uint64_t>(static_cast<int64_t>(m) - rank));
    }
  }
  return out;
}

std::vector<Declaration> decode_layout(std::string_view bytes) {
  Reader in(bytes);
  std::vector<Declaration> out;
  while (!in.done()) {
    Declaration d;
    d.key = in.str("key");
    const uint64_t dtype = in.u64("dtype");
    if (dtype > static_cast<uint64_t>(DType::kBool)) in.fail("dtype");
    d.dtype = static_cast<DType>(dtype);
    const uint64_t kind = in.u64("kind");
    if (kind > static_cast<uint64_t>(Declaration::Kind::kSplit)) in.fail("kind");
    d.kind = static_cast<Declaration::Kind>(kind);
    d.local_shape = in.shape("local shape");
    if (d.kind == Declaration::Kind::kShard) {
      d.global_shape = in.shape("global shape");
      d.offset = in.shape("offset");
    } else if (d.kind == Declaration::Kind::kSplit) {
      d.split_dim = static_cast<int64_t>(in.u64("split dimension"));
      const uint64_t n = in.u64("split group");
      if (n > bytes.size() / 8) in.fail("split group");
      d.group.reserve(n);
      for (uint64_t i = 0; i < n; ++i) {
        const auto delta = static_cast<int64_t>(in.u64("split group"));
        if (delta < INT_MIN || delta > INT_MAX) in.fail("split group");
        d.group.push_back(static_cast<int>(delta));
      }
    }
    out.push_back(std::move(d));
  }
  return out;
}

DeclaredLayouts DeclaredLayouts::from_encoded(const std::vector<std::string>& encoded) {
  DeclaredLayouts out;
  std::unordered_map<std::string_view, int32_t> layout_of_bytes;
  out.layout_of.reserve(encoded.size());
  for (const std::string& bytes : encoded) {
    auto [it, fresh] = layout_of_bytes.try_emplace(bytes, static_cast<int32_t>(out.layouts.size()));
    if (fresh) out.layouts.push_back(decode_layout(bytes));
    out.layout_of.push_back(it->second);
  }
  return out;
}

DeclaredLayouts DeclaredLayouts::from_ranks(
    const std::vector<std::vector<Declaration>>& declarations) {
  std::vector<std::string> encoded;
  encoded.reserve(declarations.size());
  for (size_t r = 0; r < declarations.size(); ++r) {
    encoded.push_back(encode_layout(declarations[r], static_cast<int>(r)));
  }
  return from_encoded(encoded);
}

}  // namespace shardload
