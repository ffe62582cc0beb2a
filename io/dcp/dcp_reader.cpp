#include "io/dcp/dcp_reader.h"

#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <unordered_map>

#include "core/error.h"
#include "io/chunk_bytes.h"
#include "io/file_bytes.h"
#include "io/key_text.h"
#include "io/pickle.h"
#include "io/pickle_data.h"
#include "io/pt_layout.h"
#include "io/pt_views.h"
#include "io/read_budget.h"
#include "io/safetensors_header.h"

namespace shardload {
namespace {

using Kind = PickleValue::Kind;

/// The key of an item: its tensor's key and the chunk's offsets.
using ItemKey = std::pair<std::string, Shape>;

/// A DCP item's bytes start with a zip local header (a torch.save archive) or, with the
/// safetensors serialization, with the 8-byte header length of a safetensors blob.
bool starts_with_zip(const FileBytes& file, uint64_t pos) {
  if (pos > file.size() || file.size() - pos < 4) return false;
  char magic[4];
  file.read_at(pos, 4, magic);
  return std::memcmp(magic, "PK\x03\x04", 4) == 0;
}

/// torch.save writes no zip comment: an item's archive ends with its end-of-directory record,
/// exactly at the item's last byte. A length that reaches into the next item is refused.
void check_archive_end(const FileBytes& file, const DcpStorage& s) {
  constexpr uint64_t kEndRecord = 22;
  char magic[4] = {};
  if (s.length >= kEndRecord) file.read_at(s.offset + s.length - kEndRecord, 4, magic);
  if (std::memcmp(magic, "PK\x05\x06", 4) != 0) {
    throw FormatError("its item of " + std::to_string(s.length) + " bytes at byte " +
                      std::to_string(s.offset) +
                      " does not end with its archive's end record (a length that lies)");
  }
}

}  // namespace

struct DcpReader::Impl {
  FileBytes bytes;
  std::shared_ptr<const DcpMetadata> md;
  int32_t dcp_file = 0;

  struct Item {
    const DcpTensor* tensor = nullptr;
    const DcpChunk* chunk = nullptr;
    int64_t order = 0;
  };
  std::vector<Item> items;            ///< this file's chunks, in metadata order
  std::map<ItemKey, size_t> item_of;  ///< (key, offsets) -> items index
  mutable std::mutex open_mutex;      ///< guards `opened` and `blobs`
  mutable std::vector<std::unique_ptr<const PtTensor>> opened;  ///< per item, once opened
  /// A safetensors blob (DCP's safetensors serialization): its header, where its data starts.
  struct Blob {
    SafetensorsHeader header;
    uint64_t data_pos = 0;
  };
  mutable std::map<uint64_t, Blob> blobs;  ///< by the blob's position

  size_t item_index(const ChunkRecord& row) const {
    auto it = item_of.find({row.key, row.offset});
    if (it == item_of.end()) throw FormatError("the file holds no such chunk");
    const Item& item = items[it->second];
    if (row.dtype != item.tensor->dtype || row.global_shape != item.tensor->size ||
        row.shape != item.chunk->sizes || row.data_offset != item.chunk->storage.offset) {
      throw FormatError("the index row is not the metadata's chunk");
    }
    return it->second;
  }

  /// The view of the item's chunk in the file, opened and checked once.
  const PtTensor& view(const ChunkRecord& row) const {
    const size_t i = item_index(row);
    std::lock_guard lock(open_mutex);
    if (!opened[i]) opened[i] = std::make_unique<const PtTensor>(open_item(items[i]));
    return *opened[i];
  }

  PtTensor open_item(const Item& item) const {
    const DcpChunk& c = *item.chunk;
    const DcpStorage& s = c.storage;
    if (s.offset > bytes.size() || s.length > bytes.size() - s.offset) {
      throw FormatError("its item of " + std::to_string(s.length) + " bytes at byte " +
                        std::to_string(s.offset) + " reaches past the end of the file (" +
                        std::to_string(bytes.size()) + " bytes)");
    }
    const DType dtype = item.tensor->dtype;
    PtTensor t;
    if (numel(c.sizes) == 0) {  // no bytes (DCP still writes an item for it)
      t.dtype = dtype;
      t.shape = c.sizes;
      t.stride.assign(c.sizes.size(), 1);
      t.record_pos = s.offset;
      return t;
    }
    if (starts_with_zip(bytes, s.offset)) {
      check_archive_end(bytes, s);
      t = read_pt_tensor_archive(bytes, ByteWindow{s.offset, s.length});
    } else {
      t = blob_entry(item);
    }
    if (t.dtype != dtype || t.shape != c.sizes) {
      throw FormatError("its item holds a " + std::string(dtype_name(t.dtype)) +
                        " tensor of shape " + shape_str(t.shape) + ", the metadata says " +
                        std::string(dtype_name(dtype)) + " " + shape_str(c.sizes));
    }
    return t;
  }

  /// DCP's safetensors serialization: the item's offset is where the file's safetensors blob
  /// starts (one per file, after the non-tensor items); the chunk is its entry of the key.
  PtTensor blob_entry(const Item& item) const {
    const uint64_t at = item.chunk->storage.offset;
    auto it = blobs.find(at);
    if (it == blobs.end()) {
      unsigned char prefix[8];
      if (bytes.size() - at < 8)
        throw FormatError("its item is neither a torch.save archive nor a safetensors blob");
      bytes.read_at(at, 8, prefix);
      const uint64_t header = safetensors_header_length(prefix, bytes.size() - at);
      std::string json(header, '\0');
      bytes.read_at(at + 8, header, json.data());
      const uint64_t data_pos = at + 8 + header;
      it =
          blobs.emplace(at, Blob{parse_safetensors_header(json, bytes.size() - data_pos), data_pos})
              .first;
    }
    for (const SafetensorsEntry& e : it->second.header.entries) {
      if (e.key != item.tensor->fqn) continue;
      PtTensor t;
      t.dtype = e.dtype;
      t.shape = e.shape;
      t.stride.assign(e.shape.size(), 1);
      for (size_t d = e.shape.size(); d-- > 1;)
        t.stride[d - 1] = t.stride[d] * std::max<int64_t>(e.shape[d], 1);
      t.record = "safetensors blob at byte " + std::to_string(at);
      t.record_pos = it->second.data_pos + e.begin;
      t.record_bytes = e.end - e.begin;
      if (t.record_bytes != item.chunk->storage.length) {
        throw FormatError("its safetensors entry has " + std::to_string(t.record_bytes) +
                          " bytes, the metadata says " +
                          std::to_string(item.chunk->storage.length));
      }
      return t;
    }
    throw FormatError("the safetensors blob at byte " + std::to_string(at) + " has no entry " +
                      quote_text(item.tensor->fqn));
  }
};

DcpReader::DcpReader(const std::string& path, std::shared_ptr<const DcpMetadata> metadata,
                     int32_t dcp_file)
    : impl_(std::make_unique<Impl>()), path_(path) {
  try {
    impl_->bytes = FileBytes::open(path);
    impl_->md = std::move(metadata);
    impl_->dcp_file = dcp_file;
    int64_t order = 0;
    for (const DcpTensor& t : impl_->md->tensors) {
      for (const DcpChunk& c : t.chunks) {
        if (c.storage.file != dcp_file) continue;
        if (!impl_->item_of.emplace(ItemKey{t.fqn, c.offsets}, impl_->items.size()).second) {
          throw FormatError("key " + quote_text(t.fqn) + ": two chunks at " + shape_str(c.offsets));
        }
        const uint64_t size = impl_->bytes.size();
        if (c.storage.offset > size || c.storage.length > size - c.storage.offset) {
          throw FormatError("key " + quote_text(t.fqn) + " chunk at " + shape_str(c.offsets) +
                            ": its item of " + std::to_string(c.storage.length) +
                            " bytes at byte " + std::to_string(c.storage.offset) +
                            " reaches past the end of the file (" + std::to_string(size) +
                            " bytes)");
        }
        impl_->items.push_back({&t, &c, order});
      }
      ++order;
    }
    impl_->opened.resize(impl_->items.size());
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

DcpReader::~DcpReader() = default;
DcpReader::DcpReader(DcpReader&&) noexcept = default;
DcpReader& DcpReader::operator=(DcpReader&&) noexcept = default;

std::vector<ChunkRecord> DcpReader::read_index(int32_t file_number) const {
  std::vector<ChunkRecord> rows;
  rows.reserve(impl_->items.size());
  for (const auto& item : impl_->items) {
    ChunkRecord row;
    row.key = item.tensor->fqn;
    row.dtype = item.tensor->dtype;
    row.global_shape = item.tensor->size;
    row.offset = item.chunk->offsets;
    row.shape = item.chunk->sizes;
    row.file = file_number;
    row.data_offset = item.chunk->storage.offset;
    row.nbytes =
        static_cast<uint64_t>(numel(row.shape)) * static_cast<uint64_t>(dtype_size(row.dtype));
    row.order = item.order;
    rows.push_back(std::move(row));
  }
  return rows;
}

void DcpReader::prepare(const ChunkRecord& row) const {
  try {
    impl_->view(row);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key " + quote_text(row.key) + " chunk at " +
                         shape_str(row.offset) + ": ");
  }
}

void DcpReader::read(const ChunkRecord& row, const Shape& offset_in_chunk, const Shape& shape,
                     void* dst, bool /*verify*/) const {
  try {
    read_pt_box(impl_->bytes, impl_->view(row), offset_in_chunk, shape, dst);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key " + quote_text(row.key) + " chunk at " +
                         shape_str(row.offset) + ": ");
  }
}

void DcpReader::read_chunk(const ChunkRecord& row, void* dst, bool verify) const {
  read(row, Shape(row.shape.size(), 0), row.shape, dst, verify);
}

void DcpReader::read_chunks(std::span<const ChunkRecord* const> rows, void* dst,
                            bool /*verify*/) const {
  // Items lie back to back, each ~1.5 KiB of zip around its data: one read per chunk but where
  // the safetensors serialization packs them.
  for (const ChunkRecord* row : rows) prepare(*row);
  try {
    read_pt_views(
        impl_->bytes, rows,
        [this](const ChunkRecord& row) -> const PtTensor& { return impl_->view(row); }, dst);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": ");
  }
}

void DcpReader::verify_chunk(const ChunkRecord& row) const {
  try {
    verify_pt_tensor(impl_->bytes, impl_->view(row));
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key " + quote_text(row.key) + " chunk at " +
                         shape_str(row.offset) + ": ");
  }
}

uint64_t DcpReader::stored_bytes(const ChunkRecord& row) const {
  return pt_stored_bytes(impl_->view(row));
}

bool DcpReader::enable_direct_io() { return impl_->bytes.enable_direct_io(); }

uint64_t DcpReader::file_size() const { return impl_->bytes.size(); }

// ---- Non-tensor items ----

namespace {

/// A plain pickle value as a Value; nullopt for anything else (an object, a global).
std::optional<Value> plain_value(const PickleValue& v) {
  switch (v.kind) {
    case Kind::kNone:
      return Value::none();
    case Kind::kBool:
      return Value::of_bool(v.boolean);
    case Kind::kInt:
      return Value::of_int(v.integer);
    case Kind::kFloat:
      return Value::of_float(v.floating);
    case Kind::kString:
      return Value::of_str(v.text);
    case Kind::kBytes:
      return Value::of_bytes(v.text);
    case Kind::kTuple:
    case Kind::kList: {
      std::vector<Value> items;
      for (const auto& item : v.items) {
        auto x = plain_value(*item);
        if (!x) return std::nullopt;
        items.push_back(std::move(*x));
      }
      return v.kind == Kind::kList ? Value::list(std::move(items)) : Value::tuple(std::move(items));
    }
    case Kind::kDict: {
      std::vector<Value> pairs;
      for (const auto& [k, x] : v.entries) {
        auto key = plain_value(*k);
        auto value = plain_value(*x);
        if (!key || !value || key->kind == Value::Kind::kList || key->kind == Value::Kind::kDict) {
          return std::nullopt;
        }
        pairs.push_back(std::move(*key));
        pairs.push_back(std::move(*value));
      }
      return Value::dict(std::move(pairs));
    }
    default:
      return std::nullopt;
  }
}

/// One item's value: plain data, else its pickle's bytes.
Value item_value(const FileBytes& file, const DcpStorage& s) {
  if (s.offset > file.size() || s.length > file.size() - s.offset) {
    throw FormatError("its item of " + std::to_string(s.length) + " bytes at byte " +
                      std::to_string(s.offset) + " reaches past the end of the file (" +
                      std::to_string(file.size()) + " bytes)");
  }
  check_archive_end(file, s);
  const std::string pickle = read_pt_archive_pickle(file, ByteWindow{s.offset, s.length});
  bool refused_global = false;
  PickleHooks hooks = data_pickle_hooks();
  hooks.allow_global = [&](const std::string& module, const std::string& name) {
    const bool ok = is_data_global(module, name);
    refused_global = refused_global || !ok;
    return ok;
  };
  PickleLimits limits;
  limits.max_state_bytes = parse_budget(pickle.size());
  limits.max_depth = kMaxValueDepth;
  try {
    const PickleValuePtr root = unpickle(pickle, hooks, limits);
    if (auto v = plain_value(*root)) return std::move(*v);
  } catch (const FormatError&) {
    if (!refused_global) throw;
  }
  return Value::of_pickle(pickle);  // an object: its bytes, never run here
}

/// The values of one key, nested by the rest of their paths.
struct ValueTree {
  std::optional<Value> leaf;
  std::vector<std::pair<DcpPathPart, ValueTree>> children;

  ValueTree& child(const DcpPathPart& part) {
    for (auto& [p, t] : children) {
      if (p.is_index == part.is_index && p.index == part.index && p.key == part.key) return t;
    }
    children.emplace_back(part, ValueTree{});
    return children.back().second;
  }

  Value take(const std::string& key) {
    if (leaf) {
      if (!children.empty()) {
        throw FormatError("key " + quote_text(key) + " is both a value and holds values");
      }
      return std::move(*leaf);
    }
    bool dense = true;  // indices 0..n-1 in order: a list
    for (size_t i = 0; i < children.size(); ++i) {
      dense =
          dense && children[i].first.is_index && children[i].first.index == static_cast<int64_t>(i);
    }
    std::vector<Value> out;
    for (auto& [part, tree] : children) {
      const std::string sub = key + "." + (part.is_index ? std::to_string(part.index) : part.key);
      if (!dense)
        out.push_back(part.is_index ? Value::of_int(part.index) : Value::of_str(part.key));
      out.push_back(tree.take(sub));
    }
    return dense ? Value::list(std::move(out)) : Value::dict(std::move(out));
  }
};

}  // namespace

ValueList read_dcp_values(const std::string& dir, const DcpMetadata& md) {
  std::map<int32_t, FileBytes> files;
  std::vector<std::string> keys;  // in first-seen order
  std::map<std::string, ValueTree> trees;
  for (const DcpBytesItem& item : md.bytes_items) {
    const std::string path = dir + "/" + md.files[static_cast<size_t>(item.storage.file)];
    Value value;
    try {
      auto it = files.find(item.storage.file);
      if (it == files.end()) it = files.emplace(item.storage.file, FileBytes::open(path)).first;
      value = item_value(it->second, item.storage);
    } catch (...) {
      rethrow_with_context("In " + path + ": reading key " + quote_text(item.fqn) + ": ");
    }
    // The key is the path up to its first list index; the rest nests inside the value.
    const std::vector<DcpPathPart> path_parts = dcp_path_of(md, item.fqn);
    size_t first_index = 0;
    while (first_index < path_parts.size() && !path_parts[first_index].is_index) ++first_index;
    std::string key;
    if (first_index == path_parts.size() || first_index == 0) {
      key = item.fqn;
      first_index = path_parts.size();
    } else {
      for (size_t i = 0; i < first_index; ++i) key += (i ? "." : "") + path_parts[i].key;
    }
    auto [it, fresh] = trees.try_emplace(key);
    if (fresh) keys.push_back(key);
    ValueTree* node = &it->second;
    for (size_t i = first_index; i < path_parts.size(); ++i) node = &node->child(path_parts[i]);
    if (node->leaf) {
      throw FormatError("In " + dir + "/" + kDcpMetadataName + ": key " + quote_text(item.fqn) +
                        ": planner_data gives it the path of another item");
    }
    node->leaf = std::move(value);
  }
  ValueList out;
  for (const auto& key : keys) {
    try {
      out.emplace_back(key, trees[key].take(key));
    } catch (...) {
      rethrow_with_context("In " + dir + "/" + kDcpMetadataName + ": ");
    }
  }
  return out;
}

}  // namespace shardload
