#include "io/dcp/dcp_writer.h"

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <limits>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/key_text.h"
#include "io/pickle.h"
#include "io/zip_writer.h"

namespace shardload {
namespace {

constexpr const char* kMetadataModule = "torch.distributed.checkpoint.metadata";

void check_fqn(const std::string& fqn, const std::string& where) {
  if (fqn.empty() || fqn.find('\0') != std::string::npos || !is_valid_utf8(fqn)) {
    throw UsageError(where + "key " + quote_text(fqn) + " is empty, not UTF-8 or holds NUL");
  }
}

/// Offsets and sizes of the tensor's rank, non-negative, inside `size`.
void check_chunk_bounds(const std::string& fqn, const Shape& size, const Shape& offsets,
                        const Shape& sizes, const std::string& where) {
  const std::string what = where + "tensor " + quote_text(fqn) + ": chunk at " +
                           shape_str(offsets) + " of sizes " + shape_str(sizes) + " ";
  if (static_cast<int64_t>(size.size()) > kMaxDims) {
    throw UsageError(what + "has more than " + std::to_string(kMaxDims) + " dims");
  }
  if (offsets.size() != size.size() || sizes.size() != size.size()) {
    throw UsageError(what + "does not have the rank of the global size " + shape_str(size));
  }
  for (size_t d = 0; d < size.size(); ++d) {
    if (size[d] < 0 || offsets[d] < 0 || sizes[d] < 0 || offsets[d] > size[d] ||
        sizes[d] > size[d] - offsets[d]) {
      throw UsageError(what + "is not inside the global size " + shape_str(size));
    }
  }
}

/// No two chunks of `fqn` at the same offsets: their MetadataIndex keys would collide.
void check_distinct_offsets(const std::string& fqn, std::vector<const Shape*> offsets,
                            const std::string& where) {
  std::sort(offsets.begin(), offsets.end(), [](const Shape* a, const Shape* b) { return *a < *b; });
  for (size_t i = 0; i + 1 < offsets.size(); ++i) {
    if (*offsets[i] == *offsets[i + 1]) {
      throw UsageError(where + "tensor " + quote_text(fqn) + ": two chunks at offsets " +
                       shape_str(*offsets[i]));
    }
  }
}

bool chunk_is_empty(const DcpChunk& chunk) {
  return std::find(chunk.sizes.begin(), chunk.sizes.end(), 0) != chunk.sizes.end();
}

/// Sorts the chunks by their offsets and rejects two at the same offsets (their MetadataIndex
/// keys would collide) and two non-empty ones that overlap.
void sort_chunks(DcpTensor& tensor, const std::string& where) {
  auto& chunks = tensor.chunks;
  std::stable_sort(chunks.begin(), chunks.end(),
                   [](const DcpChunk& a, const DcpChunk& b) { return a.offsets < b.offsets; });
  std::vector<const Shape*> offsets;
  for (const DcpChunk& chunk : chunks) offsets.push_back(&chunk.offsets);
  check_distinct_offsets(tensor.fqn, std::move(offsets), where);
  if (tensor.size.empty()) return;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const DcpChunk& a = chunks[i];
    if (chunk_is_empty(a)) continue;
    // Sorted by offsets: once a chunk starts past a's end in dim 0, so do all later ones.
    for (size_t j = i + 1; j < chunks.size() && chunks[j].offsets[0] < a.offsets[0] + a.sizes[0];
         ++j) {
      const DcpChunk& b = chunks[j];
      if (chunk_is_empty(b)) continue;
      bool overlap = true;
      for (size_t d = 0; d < a.offsets.size() && overlap; ++d) {
        overlap =
            a.offsets[d] < b.offsets[d] + b.sizes[d] && b.offsets[d] < a.offsets[d] + a.sizes[d];
      }
      if (overlap) {
        throw UsageError(where + "tensor " + quote_text(tensor.fqn) + ": chunks at " +
                         shape_str(a.offsets) + " and " + shape_str(b.offsets) + " overlap");
      }
    }
  }
}

/// The pickle of a plain value, as Python's pickle writes the object (protocol 2, no memo).
void pickle_value(PickleWriter& w, const Value& value, const std::string& where) {
  switch (value.kind) {
    case Value::Kind::kNone:
      w.none();
      return;
    case Value::Kind::kBool:
      w.boolean(value.boolean);
      return;
    case Value::Kind::kInt:
      w.integer(value.integer);
      return;
    case Value::Kind::kFloat:
      w.floating(value.real);
      return;
    case Value::Kind::kStr:
      if (!is_valid_utf8(value.text)) throw UsageError(where + "a str is not valid UTF-8");
      w.string(value.text);
      return;
    case Value::Kind::kBytes:
      w.bytes(value.text);
      return;
    case Value::Kind::kList:
      w.empty_list();
      if (value.items.empty()) return;
      w.mark();
      for (const Value& item : value.items) pickle_value(w, item, where);
      w.appends();
      return;
    case Value::Kind::kTuple:
      if (value.items.empty()) {
        w.empty_tuple();
        return;
      }
      w.mark();
      for (const Value& item : value.items) pickle_value(w, item, where);
      w.tuple_from_mark();
      return;
    case Value::Kind::kDict:
      if (value.items.size() % 2 != 0) throw UsageError(where + "a dict has an odd item count");
      w.empty_dict();
      if (value.items.empty()) return;
      w.mark();
      for (const Value& item : value.items) pickle_value(w, item, where);
      w.set_items();
      return;
    case Value::Kind::kPickle:
      throw UsageError(where + "a pickled object inside another value cannot be written");
  }
  throw UsageError(where + "unknown value kind");
}

/// data.pkl of a value's archive: the value's pickle, or a pickled object's bytes as they are.
std::string value_data_pkl(const Value& value, const std::string& where) {
  if (value.kind == Value::Kind::kPickle) return value.text;
  PickleWriter w;
  pickle_value(w, value, where);
  return w.finish();
}

// ---- .metadata ----------------------------------------------------------------------------

/// `cls.__new__(cls)` of a DCP class; the caller pushes the state and calls build().
void new_object(PickleWriter& w, const char* module, const char* name) {
  w.global(module, name);
  w.empty_tuple();
  w.newobj();
}

void torch_size(PickleWriter& w, const Shape& shape) {
  w.global("torch", "Size");
  w.mark();  // the argument tuple (shape,)
  w.int_tuple(shape);
  w.tuple_from_mark();
  w.reduce();
}

void tensor_properties(PickleWriter& w, DType dtype, const Shape& strides) {
  new_object(w, kMetadataModule, "TensorProperties");
  // __setstate__'s tuple: (dtype, layout, requires_grad, memory format, pin_memory, strides).
  w.mark();
  w.global("torch", dtype_name(dtype));
  w.global("torch.serialization", "_get_layout");
  w.mark();
  w.string("torch.strided");
  w.tuple_from_mark();
  w.reduce();
  w.boolean(false);
  w.global(kMetadataModule, "_MEM_FORMAT_ENCODING");
  w.mark();
  w.integer(0);  // TORCH_CONTIGUOUS_FORMAT
  w.tuple_from_mark();
  w.reduce();
  w.boolean(false);
  w.int_tuple(strides);
  w.tuple_from_mark();
  w.build();
}

void tensor_storage_metadata(PickleWriter& w, const DcpTensor& tensor) {
  new_object(w, kMetadataModule, "TensorStorageMetadata");
  w.empty_dict();
  w.mark();
  w.string("properties");
  tensor_properties(
      w, tensor.dtype,
      contiguous_strides(tensor.chunks.empty() ? tensor.size : tensor.chunks.front().sizes));
  w.string("size");
  torch_size(w, tensor.size);
  w.string("chunks");
  w.empty_list();
  if (!tensor.chunks.empty()) {
    w.mark();
    for (const DcpChunk& chunk : tensor.chunks) {
      new_object(w, kMetadataModule, "ChunkStorageMetadata");
      w.empty_dict();
      w.mark();
      w.string("offsets");
      torch_size(w, chunk.offsets);
      w.string("sizes");
      torch_size(w, chunk.sizes);
      w.set_items();
      w.build();
    }
    w.appends();
  }
  w.set_items();
  w.build();
}

/// MetadataIndex(fqn, offsets, index): the dict state of a frozen dataclass, in the order
/// pickle writes it (fqn, index, offset); a bytes item has neither index nor offset.
void metadata_index(PickleWriter& w, const std::string& fqn, const Shape* offsets, int64_t index) {
  new_object(w, kMetadataModule, "MetadataIndex");
  w.empty_dict();
  w.mark();
  w.string("fqn");
  w.string(fqn);
  w.string("index");
  if (offsets == nullptr) {
    w.none();
  } else {
    w.integer(index);
    w.string("offset");
    torch_size(w, *offsets);
  }
  w.set_items();
  w.build();
}

void storage_info(PickleWriter& w, const std::string& file, const DcpStorage& storage) {
  new_object(w, "torch.distributed.checkpoint.filesystem", "_StorageInfo");
  w.empty_dict();
  w.mark();
  w.string("relative_path");
  w.string(file);
  w.string("offset");
  w.integer(static_cast<int64_t>(storage.offset));
  w.string("length");
  w.integer(static_cast<int64_t>(storage.length));
  w.set_items();
  w.build();
}

void check_storage(const DcpStorage& storage, size_t files, const std::string& fqn,
                   const std::string& where) {
  if (storage.file < 0 || static_cast<size_t>(storage.file) >= files) {
    throw UsageError(where + "item " + quote_text(fqn) + ": storage file " +
                     std::to_string(storage.file) + " is not one of the " + std::to_string(files) +
                     " files");
  }
  constexpr auto kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  if (storage.offset > kMax || storage.length > kMax - storage.offset) {
    throw UsageError(where + "item " + quote_text(fqn) + ": storage range overflows");
  }
}

/// Everything the pickle needs to be what DCP reads: file names, unique keys, chunks inside
/// their tensors at distinct offsets, storage in range, non-empty planner paths.
void check_metadata(const DcpMetadata& m, const std::string& where) {
  std::unordered_set<std::string_view> names;
  for (const std::string& file : m.files) {
    if (file.empty() || file.find('/') != std::string::npos || file == "." || file == ".." ||
        file == kDcpMetadataName || !is_valid_utf8(file) || file.find('\0') != std::string::npos) {
      throw UsageError(where + "data file name " + quote_text(file) + " is not a plain name");
    }
    if (!names.insert(file).second) {
      throw UsageError(where + "data file " + quote_text(file) + " is named twice");
    }
  }
  std::unordered_set<std::string_view> fqns;
  for (const DcpTensor& tensor : m.tensors) {
    check_fqn(tensor.fqn, where);
    if (!fqns.insert(tensor.fqn).second) {
      throw UsageError(where + "key " + quote_text(tensor.fqn) + " is given twice");
    }
    std::vector<const Shape*> offsets;
    for (const DcpChunk& chunk : tensor.chunks) {
      check_chunk_bounds(tensor.fqn, tensor.size, chunk.offsets, chunk.sizes, where);
      check_storage(chunk.storage, m.files.size(), tensor.fqn, where);
      offsets.push_back(&chunk.offsets);
    }
    check_distinct_offsets(tensor.fqn, offsets, where);
  }
  for (const DcpBytesItem& item : m.bytes_items) {
    check_fqn(item.fqn, where);
    if (!fqns.insert(item.fqn).second) {
      throw UsageError(where + "key " + quote_text(item.fqn) + " is given twice");
    }
    check_storage(item.storage, m.files.size(), item.fqn, where);
  }
  for (const auto& [fqn, path] : m.planner_data) {
    if (path.empty()) {
      throw UsageError(where + "planner_data path of " + quote_text(fqn) + " is empty");
    }
    for (const DcpPathPart& part : path) {
      if (!part.is_index && !is_valid_utf8(part.key)) {
        throw UsageError(where + "planner_data path of " + quote_text(fqn) + " is not UTF-8");
      }
    }
  }
}

std::string metadata_pickle(const DcpMetadata& m) {
  std::unordered_map<std::string_view, const std::vector<DcpPathPart>*> paths;
  for (const auto& [fqn, path] : m.planner_data) paths.emplace(fqn, &path);

  PickleWriter w;
  new_object(w, kMetadataModule, "Metadata");
  w.empty_dict();
  w.mark();

  w.string("state_dict_metadata");
  w.empty_dict();
  if (!m.tensors.empty() || !m.bytes_items.empty()) {
    w.mark();
    for (const DcpTensor& tensor : m.tensors) {
      w.string(tensor.fqn);
      tensor_storage_metadata(w, tensor);
    }
    for (const DcpBytesItem& item : m.bytes_items) {
      w.string(item.fqn);
      new_object(w, kMetadataModule, "BytesStorageMetadata");
      w.empty_dict();
      w.build();
    }
    w.set_items();
  }

  // planner_data: how each flat key nests (DefaultSavePlanner's flattening mappings).
  w.string("planner_data");
  w.empty_dict();
  auto path_of = [&](const std::string& fqn) {
    w.string(fqn);
    w.mark();
    const auto it = paths.find(fqn);
    if (it == paths.end()) {
      w.string(fqn);
    } else {
      for (const DcpPathPart& part : *it->second) {
        if (part.is_index) {
          w.integer(part.index);
        } else {
          w.string(part.key);
        }
      }
    }
    w.tuple_from_mark();
  };
  if (!m.tensors.empty() || !m.bytes_items.empty()) {
    w.mark();
    for (const DcpTensor& tensor : m.tensors) path_of(tensor.fqn);
    for (const DcpBytesItem& item : m.bytes_items) path_of(item.fqn);
    w.set_items();
  }

  w.string("storage_data");
  w.empty_dict();
  if (!m.tensors.empty() || !m.bytes_items.empty()) {
    w.mark();
    for (const DcpTensor& tensor : m.tensors) {
      for (size_t i = 0; i < tensor.chunks.size(); ++i) {
        const DcpChunk& chunk = tensor.chunks[i];
        metadata_index(w, tensor.fqn, &chunk.offsets, static_cast<int64_t>(i));
        storage_info(w, m.files[chunk.storage.file], chunk.storage);
      }
    }
    for (const DcpBytesItem& item : m.bytes_items) {
      metadata_index(w, item.fqn, nullptr, 0);
      storage_info(w, m.files[item.storage.file], item.storage);
    }
    w.set_items();
  }

  w.string("storage_meta");
  w.none();
  w.string("version");
  w.string(kDcpWriteVersion);
  w.set_items();
  w.build();
  return w.finish();
}

}  // namespace

std::string dcp_data_file_name(int rank) { return "__" + std::to_string(rank) + "_0.distcp"; }

DcpMetadata write_dcp_data_file(const std::string& dir, int rank,
                                std::span<const DcpWriteChunk> chunks, const ValueList& values) {
  if (rank < 0) throw UsageError("DCP data file: rank " + std::to_string(rank) + " is negative");
  const std::string name = dcp_data_file_name(rank);
  const std::string path = dir + "/" + name;
  const std::string where = "In " + path + ": ";

  DcpMetadata fragment;
  fragment.files.push_back(name);
  std::unordered_map<std::string_view, size_t> tensor_of;
  std::vector<std::vector<const Shape*>> offsets_of;  // per tensor
  std::unordered_set<std::string_view> value_keys;
  for (const auto& [key, value] : values) {
    check_fqn(key, where);
    if (!value_keys.insert(key).second) {
      throw UsageError(where + "key " + quote_text(key) + " is given twice");
    }
  }
  for (const DcpWriteChunk& chunk : chunks) {
    check_fqn(chunk.fqn, where);
    if (value_keys.count(chunk.fqn) != 0) {
      throw UsageError(where + "key " + quote_text(chunk.fqn) + " is both a value and a tensor");
    }
    check_chunk_bounds(chunk.fqn, chunk.global_size, chunk.offsets, chunk.sizes, where);
    if (chunk.data == nullptr && byte_size(chunk.sizes, dtype_size(chunk.dtype)) != 0) {
      throw UsageError(where + "tensor " + quote_text(chunk.fqn) + ": chunk data is null");
    }
    const auto [it, added] = tensor_of.emplace(chunk.fqn, fragment.tensors.size());
    if (added) {
      fragment.tensors.push_back({chunk.fqn, chunk.dtype, chunk.global_size, {}});
      offsets_of.emplace_back();
    } else {
      const DcpTensor& tensor = fragment.tensors[it->second];
      if (tensor.dtype != chunk.dtype || tensor.size != chunk.global_size) {
        throw UsageError(where + "tensor " + quote_text(chunk.fqn) +
                         ": chunks disagree on dtype or global size (" +
                         std::string(dtype_name(tensor.dtype)) + " " + shape_str(tensor.size) +
                         " vs " + std::string(dtype_name(chunk.dtype)) + " " +
                         shape_str(chunk.global_size) + ")");
      }
    }
    offsets_of[it->second].push_back(&chunk.offsets);
  }
  // Same offsets twice would give two storage entries one key.
  for (size_t t = 0; t < fragment.tensors.size(); ++t) {
    check_distinct_offsets(fragment.tensors[t].fqn, offsets_of[t], where);
  }
  std::vector<std::string> value_pickles;
  value_pickles.reserve(values.size());
  for (const auto& [key, value] : values) {
    value_pickles.push_back(value_data_pkl(value, where + "value " + quote_text(key) + ": "));
  }

  try {
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);  // AtomicFile reports a missing directory
    AtomicFile out(path);
    uint64_t offset = 0;
    const ByteSink sink = [&out](const void* data, size_t n) { out.write(data, n); };
    // DCP's order inside a file: the bytes items first, then the tensors.
    for (size_t i = 0; i < values.size(); ++i) {
      const uint64_t length = write_torch_archive(value_pickles[i], {}, sink);
      fragment.bytes_items.push_back({values[i].first, DcpStorage{0, offset, length}});
      offset += length;
    }
    for (const DcpWriteChunk& chunk : chunks) {
      PickleWriter w;
      pickle_tensor(w, "0", chunk.dtype, chunk.sizes, contiguous_strides(chunk.sizes));
      const std::string pickle = w.finish();
      const auto nbytes = static_cast<size_t>(byte_size(chunk.sizes, dtype_size(chunk.dtype)));
      const TorchArchiveStorage storage{"0", {static_cast<const std::byte*>(chunk.data), nbytes}};
      const uint64_t length = write_torch_archive(pickle, {&storage, 1}, sink);
      fragment.tensors[tensor_of.at(chunk.fqn)].chunks.push_back(
          {chunk.offsets, chunk.sizes, DcpStorage{0, offset, length}});
      offset += length;
    }
    out.commit();
  } catch (...) {
    rethrow_with_context(where);
  }
  return fragment;
}

DcpMetadata merge_dcp_metadata(std::vector<DcpMetadata> fragments) {
  const std::string where = "Merging DCP metadata: ";
  DcpMetadata merged;
  merged.version = kDcpWriteVersion;
  std::unordered_map<std::string, size_t> tensor_of;
  std::unordered_map<std::string, size_t> path_of;
  std::unordered_set<std::string> file_names;
  std::unordered_set<std::string> bytes_keys;
  for (DcpMetadata& fragment : fragments) {
    const auto base = static_cast<int32_t>(merged.files.size());
    auto renumber = [&](DcpStorage& storage, const std::string& fqn) {
      check_storage(storage, fragment.files.size(), fqn, where);
      storage.file += base;
    };
    for (std::string& file : fragment.files) {
      if (!file_names.insert(file).second) {
        throw UsageError(where + "data file " + quote_text(file) + " is in two fragments");
      }
      merged.files.push_back(std::move(file));
    }
    for (DcpTensor& tensor : fragment.tensors) {
      for (DcpChunk& chunk : tensor.chunks) renumber(chunk.storage, tensor.fqn);
      const auto [it, added] = tensor_of.emplace(tensor.fqn, merged.tensors.size());
      if (added) {
        merged.tensors.push_back(std::move(tensor));
        continue;
      }
      DcpTensor& into = merged.tensors[it->second];
      if (into.dtype != tensor.dtype || into.size != tensor.size) {
        throw UsageError(
            where + "tensor " + quote_text(tensor.fqn) + ": fragments disagree on dtype or size (" +
            std::string(dtype_name(into.dtype)) + " " + shape_str(into.size) + " vs " +
            std::string(dtype_name(tensor.dtype)) + " " + shape_str(tensor.size) + ")");
      }
      for (DcpChunk& chunk : tensor.chunks) into.chunks.push_back(std::move(chunk));
    }
    for (DcpBytesItem& item : fragment.bytes_items) {
      renumber(item.storage, item.fqn);
      if (!bytes_keys.insert(item.fqn).second) {
        throw UsageError(where + "value " + quote_text(item.fqn) + " is in two fragments");
      }
      merged.bytes_items.push_back(std::move(item));
    }
    for (auto& [fqn, path] : fragment.planner_data) {
      const auto [it, added] = path_of.emplace(fqn, merged.planner_data.size());
      if (added) {
        merged.planner_data.emplace_back(fqn, std::move(path));
        continue;
      }
      const auto& known = merged.planner_data[it->second].second;
      const bool same = std::equal(known.begin(), known.end(), path.begin(), path.end(),
                                   [](const DcpPathPart& a, const DcpPathPart& b) {
                                     return a.is_index == b.is_index &&
                                            (a.is_index ? a.index == b.index : a.key == b.key);
                                   });
      if (!same) {
        throw UsageError(where + "planner_data of " + quote_text(fqn) +
                         " differs between fragments");
      }
    }
  }
  for (const DcpBytesItem& item : merged.bytes_items) {
    if (tensor_of.count(item.fqn) != 0) {
      throw UsageError(where + "key " + quote_text(item.fqn) + " is both a value and a tensor");
    }
  }
  for (DcpTensor& tensor : merged.tensors) {
    for (const DcpChunk& chunk : tensor.chunks) {
      check_chunk_bounds(tensor.fqn, tensor.size, chunk.offsets, chunk.sizes, where);
    }
    sort_chunks(tensor, where);
  }
  return merged;
}

void write_dcp_metadata(const std::string& dir, const DcpMetadata& metadata) {
  const std::string path = dir + "/" + kDcpMetadataName;
  const std::string where = "In " + path + ": ";
  check_metadata(metadata, where);
  const std::string pickle = metadata_pickle(metadata);
  // AtomicFile's errors name the path.
  AtomicFile out(path);
  out.write(pickle.data(), pickle.size());
  out.commit();
}

}  // namespace shardload
