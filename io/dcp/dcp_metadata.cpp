#include "io/dcp/dcp_metadata.h"

#include <algorithm>
#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/wire.h"
#include "io/file_bytes.h"
#include "io/file_system.h"
#include "io/key_text.h"
#include "io/pickle.h"
#include "io/pickle_data.h"
#include "io/read_budget.h"

namespace shardload {
namespace {

using Kind = PickleValue::Kind;

constexpr std::string_view kDcpMetadataModule = "torch.distributed.checkpoint.metadata";
constexpr std::string_view kShardMetadataModule =
    "torch.distributed._shard.sharded_tensor.metadata";
constexpr std::string_view kFilesystemModule = "torch.distributed.checkpoint.filesystem";
constexpr std::string_view kPlannerModule = "torch.distributed.checkpoint.planner";
constexpr std::string_view kMegatronModule = "megatron.core.dist_checkpointing.strategies.torch";

/// The classes a .metadata builds: NEWOBJ with no arguments, then BUILD with their state.
bool is_dcp_class(std::string_view module, std::string_view name) {
  static const std::set<std::pair<std::string_view, std::string_view>> kClasses = {
      {kDcpMetadataModule, "Metadata"},
      {kDcpMetadataModule, "TensorStorageMetadata"},
      {kDcpMetadataModule, "BytesStorageMetadata"},
      {kDcpMetadataModule, "TensorProperties"},
      {kDcpMetadataModule, "ChunkStorageMetadata"},
      {kDcpMetadataModule, "MetadataIndex"},
      {kDcpMetadataModule, "StorageMeta"},
      {kShardMetadataModule, "TensorProperties"},
      {kFilesystemModule, "_StorageInfo"},
      {kFilesystemModule, "_StoragePrefix"},
      {kPlannerModule, "SavePlan"},
      {kPlannerModule, "WriteItem"},
      {kPlannerModule, "TensorWriteData"},
      {kPlannerModule, "BytesIOWriteData"},
      {kMegatronModule, "MCoreMetadata"},
      {kMegatronModule, "MCoreSavePlan"},
  };
  return kClasses.count({module, name}) > 0;
}

/// Enums, pickled as REDUCE(cls, (value,)).
bool is_dcp_enum(std::string_view module, std::string_view name) {
  return (module == kDcpMetadataModule && name == "_MEM_FORMAT_ENCODING") ||
         (module == kShardMetadataModule && name == "MEM_FORMAT_ENCODING") ||
         (module == kPlannerModule && name == "WriteItemType");
}

bool is_path_class(std::string_view module, std::string_view name) {
  return (module == "pathlib" || module == "pathlib._local") &&
         (name == "PosixPath" || name == "WindowsPath" || name == "PurePosixPath" ||
          name == "PureWindowsPath" || name == "Path");
}

std::pair<std::string_view, std::string_view> split_global(std::string_view text) {
  const size_t dot = text.rfind('.');
  if (dot == std::string_view::npos) return {"", text};
  return {text.substr(0, dot), text.substr(dot + 1)};
}

PickleValuePtr make_object(std::string_view type_name) {
  auto v = make_pickle_value(Kind::kObject);
  v->type_name = std::string(type_name);
  return v;
}

PickleValuePtr call(const PickleValue& callable, const std::vector<PickleValuePtr>& args) {
  const auto [module, name] = split_global(callable.text);
  if (is_dcp_class(module, name)) {
    if (!args.empty()) {
      throw FormatError(callable.text + " called with " + std::to_string(args.size()) +
                        " arguments (DCP pickles it as an object with a state)");
    }
    return make_object(name);
  }
  if (is_dcp_enum(module, name)) {
    if (args.size() != 1 || args[0]->kind != Kind::kInt) {
      throw FormatError(callable.text + " needs one int");
    }
    auto v = make_object(name);
    v->items.push_back(args[0]);
    return v;
  }
  if (is_path_class(module, name)) {
    auto v = make_pickle_value(Kind::kString);
    for (const auto& part : args) {
      if (part->kind != Kind::kString)
        throw FormatError(callable.text + " of a " + part->describe());
      if (!v->text.empty() && v->text.back() != '/') v->text += '/';
      v->text += part->text;
    }
    return v;
  }
  if (callable.text == "torch.serialization._get_layout") {
    if (args.size() != 1 || args[0]->kind != Kind::kString) {
      throw FormatError("torch.serialization._get_layout needs a layout name");
    }
    auto v = make_pickle_value(Kind::kString);
    v->text = args[0]->text;
    return v;
  }
  return call_data_global(callable, args);
}

void build(PickleValue& object, const PickleValuePtr& state) {
  if (build_data_value(object, state)) return;
  if (object.kind == Kind::kObject && object.entries.empty() && object.items.empty()) {
    if (state->kind == Kind::kDict) {
      object.entries = state->entries;
      return;
    }
    if (state->kind == Kind::kTuple) {
      // (dict or None, slots dict): a class with __slots__; else a custom state (the tuple of
      // TensorProperties.__setstate__).
      if (state->items.size() == 2 && state->items[1]->kind == Kind::kDict &&
          (state->items[0]->kind == Kind::kDict || state->items[0]->kind == Kind::kNone)) {
        if (state->items[0]->kind == Kind::kDict) object.entries = state->items[0]->entries;
        object.entries.insert(object.entries.end(), state->items[1]->entries.begin(),
                              state->items[1]->entries.end());
        return;
      }
      object.items = state->items;
      return;
    }
  }
  throw FormatError("cannot BUILD a " + object.describe() + " from a " + state->describe());
}

// ---- Reading the unpickled objects ----

[[noreturn]] void bad(const std::string& what) { throw FormatError(what); }

bool is_object(const PickleValuePtr& v, std::string_view type) {
  return v->kind == Kind::kObject && v->type_name == type;
}

/// The field `name` of a dataclass object; nullptr when absent.
const PickleValuePtr* field(const PickleValue& object, std::string_view name) {
  for (const auto& [k, v] : object.entries) {
    if (k->kind == Kind::kString && k->text == name) return &v;
  }
  return nullptr;
}

const PickleValuePtr& need_field(const PickleValue& object, std::string_view name,
                                 const std::string& where) {
  const PickleValuePtr* v = field(object, name);
  if (!v) bad(where + ": a " + object.type_name + " without its field '" + std::string(name) + "'");
  return *v;
}

std::string text_of(const PickleValuePtr& v, const std::string& what) {
  if (v->kind != Kind::kString) bad(what + " is a " + v->describe() + ", not a str");
  return v->text;
}

uint64_t u64_of(const PickleValuePtr& v, const std::string& what) {
  if (v->kind != Kind::kInt || v->integer < 0) {
    bad(what + " is " +
        (v->kind == Kind::kInt ? std::to_string(v->integer) : "a " + v->describe()) +
        ", not a non-negative int");
  }
  return static_cast<uint64_t>(v->integer);
}

/// A torch.Size or tuple of non-negative ints, at most kMaxDims.
Shape dims_of(const PickleValuePtr& v, const std::string& what) {
  if (v->kind != Kind::kTuple && v->kind != Kind::kList) {
    bad(what + " is a " + v->describe() + ", not a size");
  }
  if (v->items.size() > static_cast<size_t>(kMaxDims)) {
    bad(what + " has " + std::to_string(v->items.size()) + " dimensions (at most " +
        std::to_string(kMaxDims) + ")");
  }
  Shape out;
  for (const auto& d : v->items) {
    if (d->kind != Kind::kInt || d->integer < 0)
      bad(what + " holds " + d->describe() + " " +
          (d->kind == Kind::kInt ? std::to_string(d->integer) : ""));
    out.push_back(d->integer);
  }
  return out;
}

/// A key for the storage table: the fqn and the chunk's offsets (empty and absent for a bytes
/// item: `offset` None).
using StorageKey = std::pair<std::string, std::optional<Shape>>;

struct RawStorage {
  std::string path;
  uint64_t offset = 0;
  uint64_t length = 0;
  bool has_transforms = false;
  std::string transforms;
};

/// A relative_path must name a plain file of the directory itself.
void check_relative_path(const std::string& path, const std::string& where) {
  if (path.empty()) bad(where + ": an empty relative_path");
  if (path.size() > 255) bad(where + ": relative_path " + quote_text(path, 60) + " is too long");
  if (!is_valid_utf8(path) || path.find('\0') != std::string::npos) {
    bad(where + ": relative_path " + quote_text(path) + " is not valid UTF-8 text");
  }
  if (path.find('/') != std::string::npos || path.find('\\') != std::string::npos || path == "." ||
      path == "..") {
    bad(where + ": relative_path " + quote_text(path) +
        " is not a file of the checkpoint directory (DCP writes __R_N.distcp)");
  }
  if (path == kDcpMetadataName || path == kMegatronMetadataName || path.starts_with(".metadata")) {
    bad(where + ": relative_path " + quote_text(path) + " names a metadata file, not a data file");
  }
}

std::string chunk_text(const std::string& fqn, const Shape& offsets) {
  return "key " + quote_text(fqn) + " chunk at " + shape_str(offsets);
}

}  // namespace

bool is_dcp_metadata_global(const std::string& module, const std::string& name) {
  if (is_dcp_class(module, name) || is_dcp_enum(module, name) || is_path_class(module, name)) {
    return true;
  }
  if (module == "torch.serialization" && name == "_get_layout") return true;
  if (module == "torch" && dtype_from_name(name).has_value()) return true;
  // torch's dtypes shardload does not hold: loaded as names, refused with the key that has one.
  static const std::set<std::string_view> kOtherDtypes = {
      "bcomplex32", "qint8",   "quint8",  "qint32",  "quint4x2",      "quint2x4", "bits8",
      "bits16",     "bits1x8", "bits2x4", "bits4x2", "int1",          "int2",     "int3",
      "int4",       "int5",    "int6",    "int7",    "uint1",         "uint2",    "uint3",
      "uint4",      "uint5",   "uint6",   "uint7",   "float8_e8m0fnu"};
  if (module == "torch" && kOtherDtypes.count(name)) return true;
  return is_data_global(module, name);
}

DcpMetadata parse_dcp_metadata(std::string_view bytes, const std::string& name) {
  try {
    if (bytes.size() > kMaxDcpMetadataBytes) {
      bad("it has " + std::to_string(bytes.size()) + " bytes, more than the limit of " +
          std::to_string(kMaxDcpMetadataBytes));
    }
    PickleHooks hooks;
    hooks.allow_global = is_dcp_metadata_global;
    hooks.call = call;
    hooks.build = build;
    // A pickle's torch dtypes are bare globals (never called): unknown ones are refused by the
    // allowlist, which names them.
    PickleLimits limits;
    limits.max_state_bytes = parse_budget(bytes.size());
    const PickleValuePtr root = unpickle(bytes, hooks, limits);
    if (!is_object(root, "Metadata") && !is_object(root, "MCoreMetadata")) {
      bad("the pickle holds a " + root->describe() +
          ", not a torch.distributed.checkpoint Metadata");
    }
    DcpMetadata md;
    md.megatron = root->type_name == "MCoreMetadata" || field(*root, "mcore_data") != nullptr;
    if (const PickleValuePtr* v = field(*root, "version"); v && (*v)->kind == Kind::kString) {
      md.version = (*v)->text;
    }

    // storage_data: MetadataIndex -> _StorageInfo.
    const PickleValuePtr& storage_data = need_field(*root, "storage_data", "Metadata");
    if (storage_data->kind != Kind::kDict) {
      bad("storage_data is a " + storage_data->describe() + ", not a dict");
    }
    std::map<StorageKey, RawStorage> storages;
    for (const auto& [k, v] : storage_data->entries) {
      if (!is_object(k, "MetadataIndex")) bad("a storage_data key is a " + k->describe());
      if (!is_object(v, "_StorageInfo")) bad("a storage_data value is a " + v->describe());
      const std::string fqn = text_of(need_field(*k, "fqn", "storage_data"), "MetadataIndex.fqn");
      std::optional<Shape> offset;
      if (const PickleValuePtr* o = field(*k, "offset"); o && (*o)->kind != Kind::kNone) {
        offset = dims_of(*o, "MetadataIndex.offset of key " + quote_text(fqn));
      }
      const std::string where = "storage_data of key " + quote_text(fqn) +
                                (offset ? " at " + shape_str(*offset) : std::string());
      RawStorage s;
      s.path = text_of(need_field(*v, "relative_path", where), where + ": relative_path");
      check_relative_path(s.path, where);
      s.offset = u64_of(need_field(*v, "offset", where), where + ": offset");
      s.length = u64_of(need_field(*v, "length", where), where + ": length");
      if (s.offset > UINT64_MAX - s.length) {
        bad(where + ": offset " + std::to_string(s.offset) + " + length " +
            std::to_string(s.length) + " overflows 64 bits");
      }
      if (const PickleValuePtr* t = field(*v, "transform_descriptors");
          t && (*t)->kind != Kind::kNone) {
        if ((*t)->kind != Kind::kList && (*t)->kind != Kind::kTuple) {
          bad(where + ": transform_descriptors is a " + (*t)->describe());
        }
        for (const auto& d : (*t)->items) {
          s.has_transforms = true;
          s.transforms += (s.transforms.empty() ? "" : ", ") +
                          (d->kind == Kind::kString ? quote_text(d->text) : d->describe());
        }
      }
      if (!storages.emplace(StorageKey{fqn, offset}, std::move(s)).second) {
        bad(where + ": two storage entries for one item");
      }
    }

    std::unordered_map<std::string, int32_t> file_of;
    auto file_number = [&](const std::string& path) {
      auto [it, fresh] = file_of.emplace(path, static_cast<int32_t>(md.files.size()));
      if (fresh) md.files.push_back(path);
      return it->second;
    };
    size_t used = 0;
    auto take_storage = [&](const StorageKey& key, const std::string& what) {
      auto it = storages.find(key);
      if (it == storages.end()) bad(what + ": no storage_data entry says where it is");
      const RawStorage& s = it->second;
      if (s.has_transforms) {
        bad(what + ": stored through transforms (" + s.transforms +
            ", DCP's experimental extensions) that shardload does not decode; load it with "
            "dcp.load and save it again without _extensions");
      }
      ++used;
      DcpStorage out;
      out.file = file_number(s.path);
      out.offset = s.offset;
      out.length = s.length;
      return out;
    };

    const PickleValuePtr& sdm = need_field(*root, "state_dict_metadata", "Metadata");
    if (sdm->kind != Kind::kDict) bad("state_dict_metadata is a " + sdm->describe());
    std::unordered_set<std::string> keys;
    for (const auto& [k, v] : sdm->entries) {
      const std::string fqn = text_of(k, "a state_dict_metadata key");
      if (!is_valid_utf8(fqn) || fqn.find('\0') != std::string::npos || fqn.empty()) {
        bad("key " + quote_text(fqn) + " is not valid UTF-8 text without NUL");
      }
      if (!keys.insert(fqn).second) bad("key " + quote_text(fqn) + " occurs twice");
      const std::string what = "key " + quote_text(fqn);
      if (is_object(v, "BytesStorageMetadata")) {
        md.bytes_items.push_back({fqn, take_storage({fqn, std::nullopt}, what)});
        continue;
      }
      if (!is_object(v, "TensorStorageMetadata")) {
        bad(what + ": its metadata is a " + v->describe() +
            ", neither TensorStorageMetadata nor BytesStorageMetadata");
      }
      DcpTensor t;
      t.fqn = fqn;
      const PickleValuePtr& props = need_field(*v, "properties", what);
      if (!is_object(props, "TensorProperties") || props->items.empty()) {
        bad(what + ": properties are a " + props->describe());
      }
      const std::optional<DType> dtype = dtype_of_global(*props->items[0]);
      if (!dtype) {
        bad(what + ": dtype " + props->items[0]->describe() +
            " is not one shardload knows (nothing of the checkpoint is read as another dtype)");
      }
      t.dtype = *dtype;
      if (props->items.size() > 1 && props->items[1]->kind == Kind::kString &&
          props->items[1]->text != "torch.strided") {
        bad(what + ": layout " + quote_text(props->items[1]->text) + " (only torch.strided)");
      }
      t.size = dims_of(need_field(*v, "size", what), what + ": size");
      int64_t numel = 1;
      for (int64_t d : t.size) {
        if (__builtin_mul_overflow(numel, d, &numel) ||
            __builtin_mul_overflow(numel, dtype_size(t.dtype), &numel)) {
          bad(what + ": size " + shape_str(t.size) + " overflows 64 bits");
        }
        numel /= dtype_size(t.dtype);
      }
      const PickleValuePtr& chunks = need_field(*v, "chunks", what);
      if (chunks->kind != Kind::kList && chunks->kind != Kind::kTuple) {
        bad(what + ": chunks are a " + chunks->describe());
      }
      int64_t covered = 0;  // elements of all chunks: with no overlap (validate_index), coverage
      std::optional<DcpStorage> first_storage;  // an empty tensor's one chunk points there
      for (const auto& c : chunks->items) {
        if (!is_object(c, "ChunkStorageMetadata")) bad(what + ": a chunk is a " + c->describe());
        DcpChunk chunk;
        chunk.offsets = dims_of(need_field(*c, "offsets", what), what + ": chunk offsets");
        chunk.sizes = dims_of(need_field(*c, "sizes", what), what + ": chunk sizes");
        const std::string cw = chunk_text(fqn, chunk.offsets);
        if (chunk.offsets.size() != t.size.size() || chunk.sizes.size() != t.size.size()) {
          bad(cw + ": offsets " + shape_str(chunk.offsets) + " and sizes " +
              shape_str(chunk.sizes) + " do not match the tensor's size " + shape_str(t.size));
        }
        bool empty = false;
        for (size_t d = 0; d < t.size.size(); ++d) {
          if (chunk.offsets[d] > t.size[d] || chunk.sizes[d] > t.size[d] - chunk.offsets[d]) {
            bad(cw + " of sizes " + shape_str(chunk.sizes) + " reaches outside the size " +
                shape_str(t.size));
          }
          empty = empty || chunk.sizes[d] == 0;
        }
        chunk.storage = take_storage({fqn, chunk.offsets}, cw);
        if (!first_storage) first_storage = chunk.storage;
        if (!empty) {
          if (__builtin_add_overflow(covered, shardload::numel(chunk.sizes), &covered)) {
            bad(what + ": its chunks hold more elements than 64 bits count");
          }
          t.chunks.push_back(std::move(chunk));
        }
      }
      if (numel == 0) {
        // An empty tensor: one chunk of its whole (empty) size, so that its key is there; its
        // item holds no bytes to read.
        if (chunks->items.empty()) bad(what + ": no chunks");
        DcpChunk chunk;
        chunk.offsets = Shape(t.size.size(), 0);
        chunk.sizes = t.size;
        chunk.storage = *first_storage;
        t.chunks.push_back(std::move(chunk));
      }
      if (covered != numel) {
        bad(what + ": its chunks hold " + std::to_string(covered) + " elements, the size " +
            shape_str(t.size) + " has " + std::to_string(numel) +
            " (a chunk is missing, or chunks overlap)");
      }
      md.tensors.push_back(std::move(t));
    }
    if (used != storages.size()) {
      for (const auto& [key, s] : storages) {
        if (!keys.count(key.first)) {
          bad("storage_data names key " + quote_text(key.first) +
              ", which state_dict_metadata does not hold");
        }
      }
      bad("storage_data holds entries no chunk of state_dict_metadata uses");
    }

    if (const PickleValuePtr* pd = field(*root, "planner_data"); pd && (*pd)->kind == Kind::kDict) {
      for (const auto& [k, v] : (*pd)->entries) {
        if (k->kind != Kind::kString || !keys.count(k->text)) continue;
        if (v->kind != Kind::kTuple && v->kind != Kind::kList) continue;
        std::vector<DcpPathPart> path;
        for (const auto& part : v->items) {
          DcpPathPart p;
          if (part->kind == Kind::kInt) {
            p.is_index = true;
            p.index = part->integer;
          } else if (part->kind == Kind::kString) {
            p.key = part->text;
          } else {
            bad("planner_data of key " + quote_text(k->text) + " holds a " + part->describe());
          }
          path.push_back(std::move(p));
        }
        if (path.empty() || path.size() > static_cast<size_t>(kMaxValueDepth)) {
          bad("planner_data of key " + quote_text(k->text) + " has a path of " +
              std::to_string(path.size()) + " components");
        }
        md.planner_data.emplace_back(k->text, std::move(path));
      }
    }
    return md;
  } catch (...) {
    rethrow_with_context("In " + name + ": ");
  }
}

DcpMetadata read_dcp_metadata(const std::string& dir) {
  const std::string path = dir + "/" + kDcpMetadataName;
  if (!path_exists(path)) {
    if (path_exists(dir + "/" + kMegatronMetadataName)) {
      throw FormatError(
          dir + ": an incomplete Megatron-Core torch_dist checkpoint: " + kMegatronMetadataName +
          " but no " + kDcpMetadataName + " (the save did not finish); it is never read");
    }
    throw FormatError(dir + ": no " + std::string(kDcpMetadataName) +
                      " (not a torch.distributed.checkpoint directory)");
  }
  std::string bytes;
  try {
    FileBytes file = FileBytes::open(path);
    if (file.size() > kMaxDcpMetadataBytes) {
      throw FormatError("it has " + std::to_string(file.size()) +
                        " bytes, more than the limit of " + std::to_string(kMaxDcpMetadataBytes));
    }
    bytes.resize(file.size());
    file.read_at(0, bytes.size(), bytes.data());
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
  return parse_dcp_metadata(bytes, path);
}

std::vector<DcpPathPart> dcp_path_of(const DcpMetadata& metadata, const std::string& fqn) {
  for (const auto& [key, path] : metadata.planner_data) {
    if (key == fqn) return path;
  }
  DcpPathPart p;
  p.key = fqn;
  return {p};
}

namespace {

void put_storage(WireWriter& w, const DcpStorage& s) {
  w.u64(static_cast<uint64_t>(s.file));
  w.u64(s.offset);
  w.u64(s.length);
}

DcpStorage get_storage(WireReader& r, size_t files) {
  DcpStorage s;
  const uint64_t file = r.u64("file");
  if (file >= files) r.fail("a file number");
  s.file = static_cast<int32_t>(file);
  s.offset = r.u64("offset");
  s.length = r.u64("length");
  return s;
}

}  // namespace

std::string serialize_dcp_metadata(const DcpMetadata& md) {
  WireWriter w;
  w.str(md.version);
  w.u8(md.megatron ? 1 : 0);
  w.u64(md.files.size());
  for (const auto& f : md.files) w.str(f);
  w.u64(md.tensors.size());
  for (const auto& t : md.tensors) {
    w.str(t.fqn);
    w.u8(static_cast<uint8_t>(t.dtype));
    w.shape(t.size);
    w.u64(t.chunks.size());
    for (const auto& c : t.chunks) {
      w.shape(c.offsets);
      w.shape(c.sizes);
      put_storage(w, c.storage);
    }
  }
  w.u64(md.bytes_items.size());
  for (const auto& b : md.bytes_items) {
    w.str(b.fqn);
    put_storage(w, b.storage);
  }
  w.u64(md.planner_data.size());
  for (const auto& [k, path] : md.planner_data) {
    w.str(k);
    w.u64(path.size());
    for (const auto& p : path) {
      w.u8(p.is_index ? 1 : 0);
      w.i64(p.index);
      w.str(p.key);
    }
  }
  return w.take();
}

DcpMetadata deserialize_dcp_metadata(std::string_view bytes) {
  WireReader r(bytes, "serialized DCP metadata", /*from_peer=*/true);
  DcpMetadata md;
  md.version = r.str("version");
  md.megatron = r.u8("megatron") != 0;
  for (uint64_t n = r.count(8, "file count"); n > 0; --n) md.files.push_back(r.str("file"));
  for (uint64_t n = r.count(8, "tensor count"); n > 0; --n) {
    DcpTensor t;
    t.fqn = r.str("fqn");
    const uint8_t dtype = r.u8("dtype");
    if (dtype >= kDTypeCount) r.fail("a dtype");
    t.dtype = static_cast<DType>(dtype);
    t.size = r.shape("size");
    for (uint64_t c = r.count(8, "chunk count"); c > 0; --c) {
      DcpChunk chunk;
      chunk.offsets = r.shape("offsets");
      chunk.sizes = r.shape("sizes");
      chunk.storage = get_storage(r, md.files.size());
      t.chunks.push_back(std::move(chunk));
    }
    md.tensors.push_back(std::move(t));
  }
  for (uint64_t n = r.count(8, "bytes item count"); n > 0; --n) {
    DcpBytesItem b;
    b.fqn = r.str("fqn");
    b.storage = get_storage(r, md.files.size());
    md.bytes_items.push_back(std::move(b));
  }
  for (uint64_t n = r.count(8, "planner data count"); n > 0; --n) {
    std::string k = r.str("planner key");
    std::vector<DcpPathPart> path;
    for (uint64_t c = r.count(10, "path length"); c > 0; --c) {
      DcpPathPart p;
      p.is_index = r.u8("index flag") != 0;
      p.index = r.i64("index");
      p.key = r.str("key");
      path.push_back(std::move(p));
    }
    md.planner_data.emplace_back(std::move(k), std::move(path));
  }
  r.finish();
  return md;
}

}  // namespace shardload
