#include "sharding/index_check.h"

#include <unordered_map>

#include "core/error.h"
#include "sharding/box.h"

namespace shardload {
namespace {

std::string quoted(const std::string& key) { return "key '" + key + "'"; }

Box chunk_box(const ChunkRecord& c) { return Box{c.offset, c.shape}; }

}  // namespace

void validate_index(const std::vector<ChunkRecord>& index,
                    const std::vector<std::string>& file_names) {
  auto file_of = [&](const ChunkRecord& c) { return file_names[c.file]; };
  std::unordered_map<std::string, std::vector<size_t>> chunks_of;
  std::vector<const std::string*> key_order;
  for (size_t i = 0; i < index.size(); ++i) {
    const ChunkRecord& c = index[i];
    if (c.file < 0 || static_cast<size_t>(c.file) >= file_names.size()) {
      throw FormatError(quoted(c.key) + ": chunk '" + c.dataset + "' refers to shard file " +
                        std::to_string(c.file) + ", but the checkpoint has " +
                        std::to_string(file_names.size()) + " shard files");
    }
    const std::string where = " in " + file_of(c);
    const Box box = chunk_box(c);
    if (c.offset.size() != c.global_shape.size() || c.shape.size() != c.global_shape.size()) {
      throw FormatError(quoted(c.key) + ": chunk" + where + " has offset " + shape_str(c.offset) +
                        " and shape " + shape_str(c.shape) + " for global shape " +
                        shape_str(c.global_shape) + ": the numbers of dimensions differ");
    }
    for (int64_t e : c.global_shape) {
      if (e < 0) {
        throw FormatError(quoted(c.key) + ": chunk" + where + " has global shape " +
                          shape_str(c.global_shape) + " with a negative extent");
      }
    }
    if (!inside(c.global_shape, box)) {
      throw FormatError(quoted(c.key) + ": chunk " + box_str(box) + where +
                        " lies outside global shape " + shape_str(c.global_shape));
    }
    const uint64_t expect = static_cast<uint64_t>(numel(c.shape) * dtype_size(c.dtype));
    if (c.nbytes != expect) {
      throw FormatError(quoted(c.key) + ": chunk " + box_str(box) + where + " records " +
                        std::to_string(c.nbytes) + " bytes, but " + shape_str(c.shape) + " of " +
                        std::string(dtype_name(c.dtype)) + " takes " + std::to_string(expect));
    }
    auto [it, fresh] = chunks_of.try_emplace(c.key);
    if (fresh) key_order.push_back(&it->first);
    if (!fresh) {
      const ChunkRecord& f = index[it->second.front()];
      const std::string pair = quoted(c.key) + ": chunk in " + file_of(f) + " has ";
      const std::string other = ", chunk" + where + " has ";
      if (f.dtype != c.dtype) {
        throw FormatError(pair + "dtype " + std::string(dtype_name(f.dtype)) + other +
                          std::string(dtype_name(c.dtype)));
      }
      if (f.global_shape != c.global_shape) {
        throw FormatError(pair + "global shape " + shape_str(f.global_shape) + other +
                          shape_str(c.global_shape));
      }
    }
    it->second.push_back(i);
  }
  for (const std::string* key : key_order) {
    const auto& chunks = chunks_of.at(*key);
    for (size_t a = 0; a < chunks.size(); ++a) {
      const ChunkRecord& ca = index[chunks[a]];
      for (size_t b = 0; b < a; ++b) {
        const ChunkRecord& cb = index[chunks[b]];
        if (intersect(chunk_box(cb), chunk_box(ca))) {
          throw FormatError(quoted(*key) + ": chunk " + box_str(chunk_box(cb)) + " in " +
                            file_of(cb) + " overlaps chunk " + box_str(chunk_box(ca)) + " in " +
                            file_of(ca));
        }
      }
    }
  }
}

}  // namespace shardload
