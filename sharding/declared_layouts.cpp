#include "sharding/declared_layouts.h"

#include <climits>
#include <unordered_map>

#include "core/error.h"
#include "core/wire.h"

namespace shardload {

void encode_declaration(WireWriter& out, const Declaration& d, int rank) {
  {
    out.str(d.key);
    out.u64(static_cast<uint64_t>(d.dtype));
    out.u64(static_cast<uint64_t>(d.kind));
    out.shape(d.local_shape);
    // Only what the kind uses: a replicated tensor's global shape is its local shape.
    if (d.kind == Declaration::Kind::kShard) {
      out.shape(d.global_shape);
      out.shape(d.offset);
    } else if (d.kind == Declaration::Kind::kSplit) {
      out.i64(d.split_dim);
      out.u64(d.group.size());
      for (int m : d.group) out.i64(static_cast<int64_t>(m) - rank);
    }
  }
}

std::string encode_layout(const std::vector<Declaration>& declarations, int rank) {
  WireWriter out;
  out.u64(declarations.size());
  for (const Declaration& d : declarations) encode_declaration(out, d, rank);
  return out.take();
}

std::vector<Declaration> decode_layout(std::string_view bytes) {
  WireReader in(bytes, "the declaration exchange", /*from_peer=*/true);
  std::vector<Declaration> out;
  // A declaration takes at least four words (key length, dtype, kind, extent count).
  const uint64_t n = in.count(32, "declaration count");
  out.reserve(n);
  for (uint64_t i = 0; i < n; ++i) {
    Declaration& d = out.emplace_back();
    d.key = in.str("key");
    const uint64_t dtype = in.u64("dtype");
    if (dtype >= kDTypeCount) in.fail("an unknown dtype");
    d.dtype = static_cast<DType>(dtype);
    const uint64_t kind = in.u64("kind");
    if (kind > static_cast<uint64_t>(Declaration::Kind::kSplit)) in.fail("an unknown kind");
    d.kind = static_cast<Declaration::Kind>(kind);
    d.local_shape = in.shape("local shape");
    if (d.kind == Declaration::Kind::kShard) {
      d.global_shape = in.shape("global shape");
      d.offset = in.shape("offset");
    } else if (d.kind == Declaration::Kind::kSplit) {
      d.split_dim = static_cast<int64_t>(in.u64("split dimension"));
      const uint64_t n = in.count(8, "split group");
      d.group.reserve(n);
      for (uint64_t i = 0; i < n; ++i) {
        const auto delta = static_cast<int64_t>(in.u64("split group"));
        if (delta < INT_MIN || delta > INT_MAX) in.fail("a split group member out of range");
        d.group.push_back(static_cast<int>(delta));
      }
    }
  }
  in.finish();
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
