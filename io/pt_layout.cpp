#include "io/pt_layout.h"

#include <algorithm>
#include <any>
#include <cstring>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "core/error.h"
#include "io/key_text.h"
#include "io/pickle.h"
#include "io/pickle_data.h"
#include "io/pickle_select.h"
#include "io/read_budget.h"
#include "io/zip_directory.h"

namespace shardload {
namespace {

using Kind = PickleValue::Kind;

constexpr std::string_view kRebuildTensorV2 = "torch._utils._rebuild_tensor_v2";
constexpr std::string_view kRebuildTensorV3 = "torch._utils._rebuild_tensor_v3";
constexpr std::string_view kRebuildParameter = "torch._utils._rebuild_parameter";
constexpr std::string_view kRebuildParameterWithState =
    "torch._utils._rebuild_parameter_with_state";
/// The largest data.pkl read (a state dict of a million tensors needs about 100 MB).
constexpr uint64_t kMaxPickleBytes = uint64_t{1} << 30;
constexpr const char* kStorageType = "storage";

/// A storage that data.pkl names: its zip member and the dtype of its class (none for an
/// UntypedStorage, whose tensors name their dtype).
struct Storage {
  std::string record;
  std::optional<DType> dtype;
  uint64_t pos = 0;
  uint64_t bytes = 0;
};

PickleValuePtr make_object(std::any object, std::string_view type_name) {
  auto v = make_pickle_value(Kind::kObject);
  v->object = std::move(object);
  v->type_name = std::string(type_name);
  return v;
}

/// The zip members by name, and the unpickling hooks that describe tensors without reading them.
class LayoutReader {
 public:
  /// `base`: the file position of the archive's first byte (member offsets count from it).
  LayoutReader(const FileBytes& file, uint64_t base, const std::vector<ZipMember>& members,
               std::string prefix)
      : file_(file), base_(base), prefix_(std::move(prefix)) {
    for (const auto& m : members) members_.emplace(m.name, &m);
  }

  const ZipMember* member(const std::string& name) const {
    auto it = members_.find(prefix_ + name);
    return it == members_.end() ? nullptr : it->second;
  }

  /// A stored member's bytes, at most `max_bytes`.
  std::string read(const std::string& name, uint64_t max_bytes) const {
    const ZipMember* m = member(name);
    if (!m) throw FormatError("no record " + quote_text(name));
    if (m->method != 0) {
      throw FormatError("record " + quote_text(name) +
                        " is compressed; torch.save stores every record uncompressed");
    }
    if (m->size > max_bytes) {
      throw FormatError("record " + quote_text(name) + " of " + std::to_string(m->size) +
                        " bytes is larger than the limit of " + std::to_string(max_bytes));
    }
    std::string out(m->size, '\0');
    file_.read_at(base_ + m->data_offset, out.size(), out.data());
    return out;
  }

  PickleHooks hooks() {
    return checkpoint_pickle_hooks(
        [this](const PickleValuePtr& pid) { return persistent_load(pid); },
        [this](const PickleValue& callable, const std::vector<PickleValuePtr>& args) {
          return call(callable, args);
        });
  }

 private:
  // ('storage', <StorageClass>, '<key>', '<location>', numel)
  PickleValuePtr persistent_load(const PickleValuePtr& pid) {
    const StorageId id = parse_storage_id(pid);
    const std::optional<DType> dtype = id.dtype;
    const int64_t numel = id.numel;
    const std::string& key_text = id.key;
    auto it = storages_.find(key_text);
    if (it == storages_.end()) {
      auto s = std::make_shared<Storage>();
      s->record = "data/" + key_text;
      s->dtype = dtype;
      const ZipMember* m = member(s->record);
      if (!m) throw FormatError("record " + quote_text(s->record) + " is missing");
      // A deflated member would have to be inflated (to sizes the file declares) before any
      // byte of it could be read in place: refused, as torch.save never writes one.
      if (m->method != 0) {
        throw FormatError("storage record " + quote_text(s->record) +
                          " is compressed; torch.save stores every record uncompressed");
      }
      s->pos = base_ + m->data_offset;
      s->bytes = m->size;
      it = storages_.emplace(key_text, std::move(s)).first;
    }
    const Storage& s = *it->second;
    if (s.dtype != dtype) {
      throw FormatError("storage " + quote_text(s.record) + " is used with two dtypes");
    }
    const auto elsize = static_cast<uint64_t>(s.dtype ? dtype_size(*s.dtype) : 1);
    if (numel < 0 || s.bytes / elsize < static_cast<uint64_t>(numel)) {
      throw FormatError("record " + quote_text(s.record) + " has " + std::to_string(s.bytes) +
                        " bytes, fewer than " + std::to_string(numel) +
                        (s.dtype ? " elements of " + std::string(dtype_name(*s.dtype))
                                 : std::string(" bytes (an untyped storage)")));
    }
    return make_object(it->second, kStorageType);
  }

  PickleValuePtr call(const PickleValue& callable, const std::vector<PickleValuePtr>& args) {
    const std::string& f = callable.text;
    if (f == kRebuildTensorV2) {
      if (args.size() < 6 || args.size() > 7) {
        throw FormatError(f + " with " + std::to_string(args.size()) + " arguments");
      }
      return make_object(rebuild_tensor(args, std::nullopt), kPickleTensorType);
    }
    if (f == kRebuildTensorV3) {
      // (storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype[, metadata])
      if (args.size() < 7 || args.size() > 8) {
        throw FormatError(f + " with " + std::to_string(args.size()) + " arguments");
      }
      const std::optional<DType> dtype = dtype_of_global(*args[6]);
      if (!dtype) {
        throw FormatError("tensor of dtype " + args[6]->describe() +
                          ", which this reader does not know");
      }
      return make_object(rebuild_tensor(args, dtype), kPickleTensorType);
    }
    if (f == kRebuildParameter || f == kRebuildParameterWithState) {
      if (args.size() < 3 || args.size() > 4) {
        throw FormatError(f + " with " + std::to_string(args.size()) + " arguments");
      }
      const PickleValuePtr& data = args[0];
      if (data->kind != Kind::kObject || data->type_name != kPickleTensorType) {
        throw FormatError("parameter data is a " + data->describe() + ", not a tensor");
      }
      return make_object(data->object, kPickleTensorType);
    }
    return call_data_global(callable, args);
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[,
  // metadata]) of a typed storage; _rebuild_tensor_v3 with the tensor's `dtype` (an untyped
  // storage, or a typed one of that dtype). Offset, size and stride count elements of the dtype.
  PtTensor rebuild_tensor(const std::vector<PickleValuePtr>& args, std::optional<DType> dtype) {
    const PickleValuePtr& sv = args[0];
    if (sv->kind != Kind::kObject || sv->type_name != kStorageType) {
      throw FormatError("tensor storage is a " + sv->describe());
    }
    const Storage& s = **std::any_cast<std::shared_ptr<Storage>>(&sv->object);
    if (!dtype) dtype = s.dtype;
    if (!dtype) throw FormatError("a tensor of an untyped storage without a dtype");
    if (s.dtype && *s.dtype != *dtype) {
      throw FormatError("a " + std::string(dtype_name(*dtype)) + " tensor of a " +
                        std::string(dtype_name(*s.dtype)) + " storage");
    }
    PtTensor t;
    t.dtype = *dtype;
    t.record = s.record;
    t.record_pos = s.pos;
    t.record_bytes = s.bytes;
    t.storage_offset = pickle_int(args[1], "storage offset");
    t.shape = pickle_dims(args[2], "tensor size");
    t.stride = pickle_dims(args[3], "tensor stride");
    if (t.shape.size() != t.stride.size()) {
      throw FormatError("tensor size and stride differ in length");
    }
    if (t.storage_offset < 0) throw FormatError("negative storage offset");
    // Checked products: the elements and bytes of the tensor, and of its nonzero dimensions
    // even when another is zero (LibTorch computes strides from them).
    int64_t nonzero = 1;
    bool empty = false;
    for (int64_t d : t.shape) {
      if (d == 0) {
        empty = true;
      } else if (__builtin_mul_overflow(nonzero, d, &nonzero)) {
        throw FormatError("tensor size " + shape_str(t.shape) + " overflows 64 bits");
      }
    }
    int64_t nbytes = 0;
    if (__builtin_mul_overflow(nonzero, dtype_size(t.dtype), &nbytes)) {
      throw FormatError("tensor size " + shape_str(t.shape) + " overflows 64 bits in bytes");
    }
    if (empty) return t;
    // The last element the view touches must lie inside the storage.
    const auto available =
        static_cast<int64_t>(s.bytes / static_cast<uint64_t>(dtype_size(t.dtype)));
    int64_t last = t.storage_offset;
    for (size_t i = 0; i < t.shape.size(); ++i) {
      int64_t span = 0;
      if (__builtin_mul_overflow(t.shape[i] - 1, t.stride[i], &span) ||
          __builtin_add_overflow(last, span, &last)) {
        throw FormatError("tensor size/stride overflow");
      }
    }
    if (last >= available) {
      throw FormatError("tensor reaches element " + std::to_string(last) + " of record " +
                        quote_text(s.record) + ", which holds " + std::to_string(available));
    }
    return t;
  }

  const FileBytes& file_;
  uint64_t base_ = 0;
  std::string prefix_;
  std::unordered_map<std::string, const ZipMember*> members_;
  std::unordered_map<std::string, std::shared_ptr<Storage>> storages_;
};

PtTensor named(const std::string& key, const PickleValuePtr& v) {
  PtTensor t = std::any_cast<PtTensor>(v->object);
  t.key = key;
  return t;
}

}  // namespace

uint64_t PtTensor::nbytes() const {
  return static_cast<uint64_t>(numel(shape)) * static_cast<uint64_t>(dtype_size(dtype));
}

uint64_t PtTensor::data_pos() const {
  return record_pos +
         static_cast<uint64_t>(storage_offset) * static_cast<uint64_t>(dtype_size(dtype));
}

bool PtTensor::contiguous() const {
  if (numel(shape) == 0) return true;  // nothing to lay out
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] != 1 && stride[i] != expected) return false;
    expected *= shape[i];
  }
  return true;
}

namespace {

/// An archive's checked zip directory, its records' folder and its data.pkl.
struct Archive {
  std::vector<ZipMember> members;
  std::string prefix;
  std::string pickle;
};

Archive open_archive(const FileBytes& file, ByteWindow window) {
  const uint64_t size = window.length;
  if (window.base > file.size() || size > file.size() - window.base) {
    throw FormatError("archive of " + std::to_string(size) + " bytes at byte " +
                      std::to_string(window.base) + " reaches past the end of the file (" +
                      std::to_string(file.size()) + " bytes)");
  }
  if (size < 4) throw FormatError("too short to be a torch.save archive");
  unsigned char magic[4] = {};
  file.read_at(window.base, 4, magic);
  if (std::memcmp(magic, "PK\x03\x04", 4) != 0) {
    if (magic[0] == 0x80) {
      throw FormatError(
          "legacy (non-zip) torch.save format, from torch < 1.6 or "
          "_use_new_zipfile_serialization=False, is not supported; re-save it with a newer "
          "torch");
    }
    throw FormatError("not a torch.save archive (no zip signature)");
  }
  Archive a;
  a.members = scan_zip_directory(size, [&](uint64_t offset, char* buf, size_t n) {
    file.read_at(window.base + offset, n, buf);
  });
  // torch.save stores every record: a compressed member (of any method) is refused wherever it
  // is, never inflated, so that no declared size can make a reader allocate.
  for (const ZipMember& m : a.members) {
    if (m.method != 0) {
      throw FormatError("zip: member " + quote_text(m.name, 100) + " is compressed (method " +
                        std::to_string(m.method) +
                        "); torch.save stores every record uncompressed");
    }
  }
  const size_t slash = a.members.front().name.find('/');
  if (slash == std::string::npos) {
    throw FormatError("zip: member " + quote_text(a.members.front().name) +
                      " is not in a folder, as torch.save writes");
  }
  a.prefix = a.members.front().name.substr(0, slash + 1);
  LayoutReader reader(file, window.base, a.members, a.prefix);
  if (reader.member("byteorder")) {
    const std::string order = reader.read("byteorder", 64);
    if (order != "little") {
      throw FormatError("byte order " + quote_text(order) +
                        " is not supported (only little endian)");
    }
  }
  if (!reader.member("data.pkl")) {
    throw FormatError(
        "no data.pkl record: not a torch.save file (a TorchScript archive from torch.jit.save?)");
  }
  a.pickle = reader.read("data.pkl", kMaxPickleBytes);
  return a;
}

/// The archive in `window`, its directory checked and data.pkl unpickled: the root object,
/// tensors described (`tensors`) or plain data only.
PickleValuePtr unpickle_archive(const FileBytes& file, ByteWindow window, bool tensors) {
  const Archive a = open_archive(file, window);
  // The parsed state may take a small multiple of the file's bytes (io/read_budget.h).
  PickleLimits limits;
  limits.max_state_bytes = parse_budget(window.length);
  if (!tensors) return unpickle(a.pickle, data_pickle_hooks(), limits);
  LayoutReader reader(file, window.base, a.members, a.prefix);
  return unpickle(a.pickle, reader.hooks(), limits);
}

}  // namespace

PtLayout read_pt_layout(const FileBytes& file, const std::string& select) {
  return read_pt_layout(file, select, ByteWindow{0, file.size()});
}

PtLayout read_pt_layout(const FileBytes& file, const std::string& select, ByteWindow window) {
  const PickleValuePtr root = unpickle_archive(file, window, /*tensors=*/true);
  PtLayout out;
  if (select.empty()) {
    for (const auto& [key, value] : flat_state_dict(root)) out.tensors.push_back(named(key, value));
    return out;
  }
  PickleSelection selection = select_tensors(root, select);
  for (const auto& [key, value] : selection.tensors) out.tensors.push_back(named(key, value));
  out.scalars = std::move(selection.scalars);
  out.skipped = std::move(selection.skipped);
  out.other_tensors = std::move(selection.other_tensors);
  return out;
}

PtTensor read_pt_tensor_archive(const FileBytes& file, ByteWindow window) {
  const PickleValuePtr root = unpickle_archive(file, window, /*tensors=*/true);
  if (root->kind != Kind::kObject || root->type_name != kPickleTensorType) {
    throw FormatError("the archive holds a " + root->describe() + ", not one tensor");
  }
  return named("", root);
}

PickleValuePtr read_pt_object_archive(const FileBytes& file, ByteWindow window) {
  return unpickle_archive(file, window, /*tensors=*/false);
}

std::string read_pt_archive_pickle(const FileBytes& file, ByteWindow window) {
  return open_archive(file, window).pickle;
}

}  // namespace shardload
