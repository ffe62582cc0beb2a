#include "core/chunk_record.h"

#include <cstring>

#include "core/error.h"

namespace shardload {
namespace {

class Writer {
 public:
  void u64(uint64_t v) { out_.append(reinterpret_cast<const char*>(&v), sizeof v); }
  void i64(int64_t v) { u64(static_cast<uint64_t>(v)); }
  void str(const std::string& s) {
    u64(s.size());
    out_ += s;
  }
  void shape(const Shape& s) {
    u64(s.size());
    for (int64_t d : s) i64(d);
  }
  void u64s(const std::vector<uint64_t>& v) {
    u64(v.size());
    out_.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(uint64_t));
  }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  bool done() const { return pos_ == in_.size(); }
  uint64_t u64() {
    need(sizeof(uint64_t));
    uint64_t v;
    std::memcpy(&v, in_.data() + pos_, sizeof v);
    pos_ += sizeof v;
    return v;
  }
  int64_t i64() { return static_cast<int64_t>(u64()); }
  std::string str() {
    uint64_t n = u64();
    need(n);
    std::string s(in_.substr(pos_, n));
    pos_ += n;
    return s;
  }
  std::vector<uint64_t> u64s() {
    uint64_t n = u64();
    if (n > (in_.size() - pos_) / sizeof(uint64_t))
      throw FormatError("serialized index is truncated");
    std::vector<uint64_t> v(n);
    if (n) std::memcpy(v.data(), in_.data() + pos_, n * sizeof(uint64_t));
    pos_ += n * sizeof(uint64_t);
    return v;
  }
  Shape shape() {
    uint64_t n = u64();
    if (n > 64) throw FormatError("serialized index: more than 64 dimensions");
    Shape s(n);
    for (auto& d : s) d = i64();
    return s;
  }

 private:
  void need(uint64_t n) const {
    if (n > in_.size() - pos_) throw FormatError("serialized index is truncated");
  }
  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace

uint64_t block_count(uint64_t nbytes, uint64_t block_bytes) {
  if (nbytes == 0 || block_bytes == 0) return 0;
  return (nbytes - 1) / block_bytes + 1;
}

std::string serialize_records(const std::vector<ChunkRecord>& records) {
  Writer w;
  for (const auto& r : records) {
    w.str(r.key);
    w.u64(static_cast<uint64_t>(r.dtype));
    w.shape(r.global_shape);
    w.shape(r.offset);
    w.shape(r.shape);
    w.i64(r.file);
    w.str(r.dataset);
    w.u64(r.nbytes);
    w.u64(r.checksum);
    w.i64(r.order);
    w.u64(r.data_offset);
    w.u64(r.block_bytes);
    w.u64s(r.block_checksums);
  }
  return w.take();
}

void deserialize_records(std::string_view bytes, std::vector<ChunkRecord>& out) {
  Reader r(bytes);
  while (!r.done()) {
    ChunkRecord c;
    c.key = r.str();
    uint64_t dt = r.u64();
    if (dt > static_cast<uint64_t>(DType::kBool)) throw FormatError("serialized index: bad dtype");
    c.dtype = static_cast<DType>(dt);
    c.global_shape = r.shape();
    c.offset = r.shape();
    c.shape = r.shape();
    c.file = static_cast<int32_t>(r.i64());
    c.dataset = r.str();
    c.nbytes = r.u64();
    c.checksum = r.u64();
    c.order = r.i64();
    c.data_offset = r.u64();
    c.block_bytes = r.u64();
    c.block_checksums = r.u64s();
    out.push_back(std::move(c));
  }
}

}  // namespace shardload
