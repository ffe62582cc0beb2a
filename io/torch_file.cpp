#include "io/torch_file.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <caffe2/serialize/inline_container.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/error.h"
#include "io/pickle.h"
#include "io/torch_dtype.h"

namespace shardload {
namespace {

namespace fs = std::filesystem;
using Kind = PickleValue::Kind;

/// The dtype of a typed storage class torch.save names in persistent ids ("FloatStorage").
std::optional<at::ScalarType> storage_dtype(std::string_view name) {
  auto dtype = dtype_from_storage_class(name);
  return dtype ? std::optional(scalar_type_of(*dtype)) : std::nullopt;
}

std::optional<std::string_view> storage_class(at::ScalarType type) {
  auto dtype = dtype_from_scalar_type(type);
  return dtype ? std::optional(torch_storage_class(*dtype)) : std::nullopt;
}

constexpr std::string_view kRebuildTensorV2 = "torch._utils._rebuild_tensor_v2";
constexpr std::string_view kRebuildParameter = "torch._utils._rebuild_parameter";
constexpr std::string_view kRebuildParameterWithState =
    "torch._utils._rebuild_parameter_with_state";
constexpr std::string_view kOrderedDict = "collections.OrderedDict";

/// The globals a state dict pickle may load: nothing that can run code.
bool allowed_global(const std::string& module, const std::string& name) {
  if (module == "collections") return name == "OrderedDict";
  if (module == "torch._utils") {
    return name == "_rebuild_tensor_v2" || name == "_rebuild_parameter" ||
           name == "_rebuild_parameter_with_state";
  }
  if (module == "torch") return storage_dtype(name).has_value();
  return false;
}

/// A storage loaded from record "data/<key>": its raw bytes and the dtype of its class.
struct Storage {
  std::string record;
  at::ScalarType dtype;
  at::Tensor bytes;  // uint8, 1-D
};

std::string pickle_type(const PickleValuePtr& v) { return v ? v->describe() : "nothing"; }

const PickleValuePtr& arg(const std::vector<PickleValuePtr>& args, size_t i) { return args.at(i); }

int64_t as_int(const PickleValuePtr& v, const char* what) {
  if (v->kind != Kind::kInt) {
    throw FormatError(std::string(what) + " is a " + v->describe() + ", not an int");
  }
  return v->integer;
}

std::vector<int64_t> as_int_tuple(const PickleValuePtr& v, const char* what) {
  if (v->kind != Kind::kTuple && v->kind != Kind::kList) {
    throw FormatError(std::string(what) + " is a " + v->describe() + ", not a tuple");
  }
  std::vector<int64_t> out;
  out.reserve(v->items.size());
  for (const auto& item : v->items) {
    const int64_t x = as_int(item, what);
    if (x < 0) throw FormatError(std::string(what) + " has a negative entry");
    out.push_back(x);
  }
  return out;
}

const at::Tensor& as_tensor(const PickleValuePtr& v, const char* what) {
  if (v->kind != Kind::kObject || v->type_name != "tensor") {
    throw FormatError(std::string(what) + " is a " + v->describe() + ", not a tensor");
  }
  return *std::any_cast<at::Tensor>(&v->object);
}

PickleValuePtr make_object(std::any object, std::string type_name) {
  auto v = make_pickle_value(Kind::kObject);
  v->object = std::move(object);
  v->type_name = std::move(type_name);
  return v;
}

/// The state of one read: the zip reader and the storages loaded so far (shared by views).
class TorchFileReader {
 public:
  explicit TorchFileReader(caffe2::serialize::PyTorchStreamReader& zip) : zip_(zip) {}

  PickleHooks hooks() {
    PickleHooks h;
    h.allow_global = allowed_global;
    h.persistent_load = [this](const PickleValuePtr& pid) { return persistent_load(pid); };
    h.call = [this](const PickleValue& callable, const std::vector<PickleValuePtr>& args) {
      return call(callable, args);
    };
    h.build = [](PickleValue& object, const PickleValuePtr& state) {
      // An OrderedDict's state is its __dict__, i.e. {'_metadata': OrderedDict(...)}: the
      // module versions, which a state dict's tensors do not need.
      if (object.kind == Kind::kDict && state->kind == Kind::kDict) return;
      throw FormatError("cannot BUILD a " + object.describe() + " from a " + state->describe());
    };
    return h;
  }

  std::string read_record(const std::string& name) {
    const size_t n = zip_.getRecordSize(name);
    std::string out(n, '\0');
    if (n > 0) zip_.getRecord(name, out.data(), n);
    return out;
  }

 private:
  // ('storage', <StorageClass>, '<key>', '<location>', numel)
  PickleValuePtr persistent_load(const PickleValuePtr& pid) {
    if (pid->kind != Kind::kTuple || pid->items.size() < 5 ||
        pid->items[0]->kind != Kind::kString || pid->items[0]->text != "storage") {
      throw FormatError("unsupported persistent id (a " + pid->describe() +
                        "), expected ('storage', class, key, location, numel)");
    }
    const auto& cls = pid->items[1];
    const auto& key = pid->items[2];
    if (cls->kind != Kind::kGlobal || key->kind != Kind::kString) {
      throw FormatError("malformed storage persistent id");
    }
    const std::string_view cls_name(cls->text);
    const auto dtype =
        cls_name.starts_with("torch.") ? storage_dtype(cls_name.substr(6)) : std::nullopt;
    if (!dtype) throw FormatError("unsupported storage class " + cls->text);
    const int64_t numel = as_int(pid->items[4], "storage numel");

    auto it = storages_.find(key->text);
    if (it == storages_.end()) {
      auto storage = std::make_shared<Storage>();
      storage->record = "data/" + key->text;
      storage->dtype = *dtype;
      if (!zip_.hasRecord(storage->record)) {
        throw FormatError("record '" + storage->record + "' is missing");
      }
      const size_t n = zip_.getRecordSize(storage->record);
      storage->bytes = at::empty({static_cast<int64_t>(n)}, at::kByte);
      if (n > 0) zip_.getRecord(storage->record, storage->bytes.data_ptr(), n);
      it = storages_.emplace(key->text, std::move(storage)).first;
    }
    const Storage& s = *it->second;
    if (s.dtype != *dtype) {
      throw FormatError("storage '" + s.record + "' is used with two dtypes");
    }
    const int64_t elsize = static_cast<int64_t>(c10::elementSize(s.dtype));
    if (numel < 0 || s.bytes.numel() / elsize < numel) {
      throw FormatError("record '" + s.record + "' has " + std::to_string(s.bytes.numel()) +
                        " bytes, fewer than " + std::to_string(numel) + " elements of " +
                        std::string(c10::toString(s.dtype)));
    }
    return make_object(it->second, "storage");
  }

  PickleValuePtr call(const PickleValue& callable, const std::vector<PickleValuePtr>& args) {
    const std::string& f = callable.text;
    if (f == kOrderedDict) {
      auto dict = make_pickle_value(Kind::kDict);
      if (args.empty()) return dict;
      if (args.size() == 1 && (args[0]->kind == Kind::kList || args[0]->kind == Kind::kTuple)) {
        for (const auto& pair : args[0]->items) {
          if (pair->kind != Kind::kTuple || pair->items.size() != 2) {
            throw FormatError("OrderedDict from a sequence of non-pairs");
          }
          dict->entries.emplace_back(pair->items[0], pair->items[1]);
        }
        return dict;
      }
      throw FormatError("unsupported arguments to OrderedDict");
    }
    if (f == kRebuildTensorV2) {
      if (args.size() < 6 || args.size() > 7) {
        throw FormatError(f + " with " + std::to_string(args.size()) + " arguments");
      }
      return make_object(rebuild_tensor(args), "tensor");
    }
    if (f == kRebuildParameter || f == kRebuildParameterWithState) {
      if (args.size() < 3 || args.size() > 4) {
        throw FormatError(f + " with " + std::to_string(args.size()) + " arguments");
      }
      return make_object(as_tensor(arg(args, 0), "parameter data"), "tensor");
    }
    throw FormatError("cannot call " + f);
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[,
  // metadata])
  at::Tensor rebuild_tensor(const std::vector<PickleValuePtr>& args) {
    const auto& sv = arg(args, 0);
    if (sv->kind != Kind::kObject || sv->type_name != "storage") {
      throw FormatError("tensor storage is a " + pickle_type(sv));
    }
    const Storage& s = **std::any_cast<std::shared_ptr<Storage>>(&sv->object);
    const int64_t offset = as_int(arg(args, 1), "storage offset");
    const std::vector<int64_t> size = as_int_tuple(arg(args, 2), "tensor size");
    const std::vector<int64_t> stride = as_int_tuple(arg(args, 3), "tensor stride");
    if (size.size() != stride.size()) throw FormatError("tensor size and stride differ in length");
    if (offset < 0) throw FormatError("negative storage offset");

    const int64_t elsize = static_cast<int64_t>(c10::elementSize(s.dtype));
    const int64_t available = s.bytes.numel() / elsize;
    bool empty = false;
    for (int64_t d : size) empty = empty || d == 0;
    if (empty) return at::empty(size, at::TensorOptions().dtype(s.dtype));

    // The last element the view touches must lie inside the storage.
    int64_t last = offset;
    for (size_t i = 0; i < size.size(); ++i) {
      int64_t span = 0;
      if (__builtin_mul_overflow(size[i] - 1, stride[i], &span) ||
          __builtin_add_overflow(last, span, &last)) {
        throw FormatError("tensor size/stride overflow");
      }
    }
    if (last >= available) {
      throw FormatError("tensor reaches element " + std::to_string(last) + " of record '" +
                        s.record + "', which holds " + std::to_string(available));
    }
    at::Tensor typed = s.bytes.narrow(0, 0, available * elsize).view(s.dtype);
    at::Tensor view = typed.as_strided(size, stride, offset);
    // The common case, a tensor that is its whole storage, needs no copy; views (of a shared
    // storage, or of part of one) get their own contiguous memory.
    if (offset == 0 && view.is_contiguous() && view.numel() * elsize == s.bytes.numel()) {
      return view;
    }
    return view.clone(at::MemoryFormat::Contiguous);
  }

  caffe2::serialize::PyTorchStreamReader& zip_;
  std::unordered_map<std::string, std::shared_ptr<Storage>> storages_;
};

void check_zip_magic(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw FormatError(std::string("cannot open file: ") + std::strerror(errno));
  }
  char magic[4] = {};
  in.read(magic, 4);
  if (in.gcount() < 4) throw FormatError("file too short to be a torch.save file");
  if (std::memcmp(magic, "PK\x03\x04", 4) == 0) return;
  if (static_cast<uint8_t>(magic[0]) == 0x80) {
    throw FormatError(
        "legacy (non-zip) torch.save format, from torch < 1.6 or "
        "_use_new_zipfile_serialization=False, is not supported; re-save it with a newer torch");
  }
  throw FormatError("not a torch.save file (no zip signature)");
}

TensorList to_tensor_list(const PickleValuePtr& root) {
  if (root->kind != Kind::kDict) {
    throw FormatError("expected a state dict (dict of str -> tensor), found a " + root->describe());
  }
  TensorList out;
  out.reserve(root->entries.size());
  std::unordered_set<std::string> seen;
  for (const auto& [k, v] : root->entries) {
    if (k->kind != Kind::kString) {
      throw FormatError("state dict has a key of type " + k->describe() + ", expected str");
    }
    if (v->kind != Kind::kObject || v->type_name != "tensor") {
      std::string hint = v->kind == Kind::kDict
                             ? " (nested dicts such as {'state_dict': {...}} are not supported; "
                               "save the inner state dict)"
                             : "";
      throw FormatError("key '" + k->text + "': expected a tensor, found a " + v->describe() +
                        hint);
    }
    if (!seen.insert(k->text).second) throw FormatError("key '" + k->text + "': duplicate key");
    out.push_back({k->text, std::any_cast<at::Tensor>(v->object)});
  }
  return out;
}

bool is_valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    size_t n = 0;
    uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;
    for (size_t j = 1; j <= n; ++j) {
      const auto cc = static_cast<uint8_t>(s[i + j]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    constexpr uint32_t kMin[] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

/// The pickle of OrderedDict(key -> _rebuild_tensor_v2(storage i, 0, size, stride, False,
/// OrderedDict())), one storage per tensor.
std::string state_dict_pickle(const TensorList& tensors, const std::vector<at::Tensor>& data) {
  PickleWriter w;
  w.global("collections", "OrderedDict");
  w.empty_tuple();
  w.reduce();
  w.mark();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = data[i];
    w.string(tensors[i].key);
    w.global("torch._utils", "_rebuild_tensor_v2");
    w.mark();
    w.mark();
    w.string("storage");
    w.global("torch", *storage_class(t.scalar_type()));
    w.string(std::to_string(i));
    w.string("cpu");
    w.integer(t.numel());
    w.tuple_from_mark();
    w.persistent_id();
    w.integer(0);
    w.int_tuple(t.sizes().vec());
    w.int_tuple(t.strides().vec());
    w.boolean(false);
    w.global("collections", "OrderedDict");
    w.empty_tuple();
    w.reduce();
    w.tuple_from_mark();
    w.reduce();
  }
  w.set_items();
  return w.finish();
}

}  // namespace

TensorList read_torch_file(const std::string& path) {
  try {
    check_zip_magic(path);
    caffe2::serialize::PyTorchStreamReader zip(path);
    TorchFileReader reader(zip);
    if (zip.hasRecord("byteorder")) {
      const std::string order = reader.read_record("byteorder");
      if (order != "little") {
        throw FormatError("byte order '" + order + "' is not supported (only little endian)");
      }
    }
    if (!zip.hasRecord("data.pkl")) {
      throw FormatError(
          "no data.pkl record: not a torch.save file (a TorchScript archive from torch.jit.save?)");
    }
    const std::string pickle = reader.read_record("data.pkl");
    return to_tensor_list(unpickle(pickle, reader.hooks()));
  } catch (const c10::Error& e) {
    throw FormatError("In " + path + ": " + e.what_without_backtrace());
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

void write_torch_file(const std::string& path, const TensorList& tensors) {
  std::vector<at::Tensor> data;
  data.reserve(tensors.size());
  std::unordered_set<std::string_view> seen;
  for (const auto& [key, tensor] : tensors) {
    const std::string where = "In " + path + ": key '" + key + "': ";
    if (!seen.insert(key).second) throw UsageError(where + "duplicate key");
    if (!is_valid_utf8(key)) throw UsageError(where + "key is not valid UTF-8");
    if (!tensor.defined()) throw UsageError(where + "undefined tensor");
    if (!storage_class(tensor.scalar_type())) {
      throw UsageError(where + "unsupported dtype " +
                       std::string(c10::toString(tensor.scalar_type())));
    }
    data.push_back(tensor.cpu().contiguous());
  }

  const std::string tmp = path + ".tmp";
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw FormatError(std::string("cannot create file: ") + std::strerror(errno));
    {
      caffe2::serialize::PyTorchStreamWriter zip([&out](const void* buf, size_t n) -> size_t {
        out.write(static_cast<const char*>(buf), static_cast<std::streamsize>(n));
        return out ? n : 0;
      });
      const std::string pickle = state_dict_pickle(tensors, data);
      // The same records, in the same order, as torch.save; the writer adds "version".
      zip.writeRecord("data.pkl", pickle.data(), pickle.size());
      zip.writeRecord(".format_version", "1", 1);
      zip.writeRecord(".storage_alignment", "64", 2);
      zip.writeRecord("byteorder", "little", 6);
      for (size_t i = 0; i < data.size(); ++i) {
        zip.writeRecord("data/" + std::to_string(i), data[i].data_ptr(), data[i].nbytes());
      }
      zip.writeEndOfFile();
    }
    out.close();
    if (!out) throw FormatError(std::string("cannot write file: ") + std::strerror(errno));
    std::error_code ec;
    fs::rename(tmp, path, ec);
    if (ec) throw FormatError("cannot rename " + tmp + " into place: " + ec.message());
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    try {
      throw;
    } catch (const c10::Error& e) {
      throw FormatError("In " + path + ": " + e.what_without_backtrace());
    } catch (...) {
      rethrow_with_context("In " + path + ": ");
    }
  }
}

}  // namespace shardload
