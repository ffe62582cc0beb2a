#include "loader/declarations.h"

#include <cstring>

#include "core/error.h"

namespace shardload {
namespace {

void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), 8); }
void put_str(std::string& out, const std::string& s) {
  put_u64(out, s.size());
  out += s;
}
void put_shape(std::string& out, const Shape& s) {
  put_u64(out, s.size());
  for (int64_t d : s) put_u64(out, static_cast<uint64_t>(d));
}

struct In {
  const std::string& s;
  size_t pos = 0;
  uint64_t u64() {
    if (pos + 8 > s.size()) throw CommError("malformed declaration exchange");
    uint64_t v;
    std::memcpy(&v, s.data() + pos, 8);
    pos += 8;
    return v;
  }
  std::string str() {
    uint64_t n = u64();
    if (n > s.size() - pos) throw CommError("malformed declaration exchange");
    std::string out = s.substr(pos, n);
    pos += n;
    return out;
  }
  Shape shape() {
    uint64_t n = u64();
    if (n > 64) throw CommError("malformed declaration exchange");
    Shape out(n);
    for (auto& d : out) d = static_cast<int64_t>(u64());
    return out;
  }
};

}  // namespace

std::vector<std::vector<Declaration>> exchange_declarations(const Communicator& comm,
                                                            const std::vector<Declaration>& mine) {
  std::string bytes;
  for (const auto& d : mine) {
    put_str(bytes, d.key);
    put_u64(bytes, static_cast<uint64_t>(d.dtype));
    put_shape(bytes, d.local_shape);
    put_u64(bytes, static_cast<uint64_t>(d.kind));
    put_shape(bytes, d.global_shape);
    put_shape(bytes, d.offset);
    put_u64(bytes, static_cast<uint64_t>(d.split_dim));
    put_u64(bytes, d.group.size());
    for (int g : d.group) put_u64(bytes, static_cast<uint64_t>(g));
  }
  auto all = comm.allgather(bytes);
  std::vector<std::vector<Declaration>> out(all.size());
  for (size_t r = 0; r < all.size(); ++r) {
    In in{all[r]};
    while (in.pos < all[r].size()) {
      Declaration d;
      d.key = in.str();
      d.dtype = static_cast<DType>(in.u64());
      d.local_shape = in.shape();
      d.kind = static_cast<Declaration::Kind>(in.u64());
      d.global_shape = in.shape();
      d.offset = in.shape();
      d.split_dim = static_cast<int64_t>(in.u64());
      uint64_t n = in.u64();
      for (uint64_t i = 0; i < n; ++i) d.group.push_back(static_cast<int>(in.u64()));
      out[r].push_back(std::move(d));
    }
  }
  return out;
}

}  // namespace shardload
