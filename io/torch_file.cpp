#include "io/torch_file.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <caffe2/serialize/inline_container.h>
#include <caffe2/serialize/read_adapter_interface.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <exception>
#include <memory>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/key_text.h"
#include "io/pickle.h"
#include "io/pickle_data.h"
#include "io/pickle_select.h"
#include "io/safetensors_header.h"
#include "io/torch_dtype.h"
#include "io/zip_directory.h"

namespace shardload {
namespace {

using Kind = PickleValue::Kind;

std::optional<std::string_view> storage_class(at::ScalarType type) {
  auto dtype = dtype_from_scalar_type(type);
  return dtype ? std::optional(torch_storage_class(*dtype)) : std::nullopt;
}

constexpr std::string_view kRebuildTensorV2 = "torch._utils._rebuild_tensor_v2";
constexpr std::string_view kRebuildParameter = "torch._utils._rebuild_parameter";
constexpr std::string_view kRebuildParameterWithState =
    "torch._utils._rebuild_parameter_with_state";

/// The largest data.pkl read (a state dict of a million tensors needs about 100 MB).
constexpr uint64_t kMaxPickleBytes = uint64_t{1} << 30;
/// Views are materialized contiguous; the bytes that takes, beyond the storages themselves,
/// may reach max(this, the file's size): a stride-0 expansion cannot ask for terabytes.
constexpr uint64_t kMaterializeFloorBytes = uint64_t{1} << 30;

/// A storage loaded from record "data/<key>": its raw bytes and the dtype of its class.
struct Storage {
  std::string record;
  at::ScalarType dtype;
  at::Tensor bytes;  // uint8, 1-D
};

std::string pickle_type(const PickleValuePtr& v) { return v ? v->describe() : "nothing"; }

const PickleValuePtr& arg(const std::vector<PickleValuePtr>& args, size_t i) { return args.at(i); }

std::string shape_text(const std::vector<int64_t>& size) {
  std::string out = "[";
  for (size_t i = 0; i < size.size(); ++i) out += (i ? ", " : "") + std::to_string(size[i]);
  return out + "]";
}

const at::Tensor& as_tensor(const PickleValuePtr& v, const char* what) {
  if (v->kind != Kind::kObject || v->type_name != kPickleTensorType) {
    throw FormatError(std::string(what) + " is a " + v->describe() + ", not a tensor");
  }
  return *std::any_cast<at::Tensor>(&v->object);
}

PickleValuePtr make_object(std::any object, std::string_view type_name) {
  auto v = make_pickle_value(Kind::kObject);
  v->object = std::move(object);
  v->type_name = std::string(type_name);
  return v;
}

std::string fold_case(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

/// LibTorch's zip reader over a file descriptor that this adapter owns: the reader then sees
/// exactly the file (the same inode, of the same size) that the directory check saw.
class FdReadAdapter final : public caffe2::serialize::ReadAdapterInterface {
 public:
  explicit FdReadAdapter(const std::string& path)
      : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    if (fd_ < 0) throw FormatError(std::string("cannot open file: ") + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      const int err = errno;
      ::close(fd_);
      throw FormatError(std::string("cannot stat file: ") + std::strerror(err));
    }
    size_ = static_cast<size_t>(st.st_size);
  }
  ~FdReadAdapter() override { ::close(fd_); }
  FdReadAdapter(const FdReadAdapter&) = delete;
  FdReadAdapter& operator=(const FdReadAdapter&) = delete;

  size_t size() const override { return size_; }

  /// Reads up to `n` bytes at `pos`; fewer only at the end of the file or on an error.
  size_t read(uint64_t pos, void* buf, size_t n, const char* /*what*/ = "") const override {
    size_t done = 0;
    while (done < n) {
      const ssize_t r =
          ::pread(fd_, static_cast<char*>(buf) + done, n - done, static_cast<off_t>(pos + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) break;
      done += static_cast<size_t>(r);
    }
    return done;
  }

  /// Reads exactly `n` bytes at `offset`; FormatError otherwise.
  void read_exactly(uint64_t offset, char* buf, size_t n) const {
    if (read(offset, buf, n) != n) {
      throw FormatError("cannot read " + std::to_string(n) + " bytes at offset " +
                        std::to_string(offset) + " (file truncated?)");
    }
  }

 private:
  int fd_;
  size_t size_ = 0;
};

/// A torch.save zip archive: its central directory checked (zip_directory.h) before LibTorch's
/// reader opens it, and every record size that reader reports matched against that directory.
class TorchArchive {
 public:
  explicit TorchArchive(const std::string& path)
      : file_(std::make_shared<FdReadAdapter>(path)), file_size_(file_->size()) {
    if (file_size_ < 4) throw FormatError("file too short to be a torch.save file");
    char magic[4] = {};
    file_->read_exactly(0, magic, 4);
    if (std::memcmp(magic, "PK\x03\x04", 4) != 0) {
      if (static_cast<uint8_t>(magic[0]) == 0x80) {
        throw FormatError(
            "legacy (non-zip) torch.save format, from torch < 1.6 or "
            "_use_new_zipfile_serialization=False, is not supported; re-save it with a newer "
            "torch");
      }
      throw FormatError("not a torch.save file (no zip signature)");
    }
    const FdReadAdapter& file = *file_;
    const auto members = scan_zip_directory(
        file_size_,
        [&file](uint64_t offset, char* buf, size_t n) { file.read_exactly(offset, buf, n); });
    for (const auto& m : members) sizes_.emplace(fold_case(m.name), m.size);
    // LibTorch's reader takes the folder of the first member as the archive's name.
    const size_t slash = members.front().name.find('/');
    if (slash == std::string::npos) {
      throw FormatError("zip: member " + quote_text(members.front().name) +
                        " is not in a folder, as torch.save writes");
    }
    prefix_ = fold_case(members.front().name.substr(0, slash + 1));
    zip_ = std::make_unique<caffe2::serialize::PyTorchStreamReader>(file_);
  }

  uint64_t file_size() const { return file_size_; }
  bool has(const std::string& name) { return zip_->hasRecord(name); }

  /// The record's size, as LibTorch's reader and the checked directory agree on it.
  uint64_t size(const std::string& name) {
    const uint64_t n = zip_->getRecordSize(name);
    auto it = sizes_.find(prefix_ + fold_case(name));
    if (it == sizes_.end() || it->second != n) {
      throw FormatError("zip: record " + quote_text(name) + " of " + std::to_string(n) +
                        " bytes is not in the checked central directory");
    }
    return n;
  }

  /// The whole record, refused when larger than `max_bytes`.
  std::string read(const std::string& name, uint64_t max_bytes) {
    const uint64_t n = size(name);
    if (n > max_bytes) {
      throw FormatError("record " + quote_text(name) + " of " + std::to_string(n) +
                        " bytes is larger than the limit of " + std::to_string(max_bytes));
    }
    std::string out(n, '\0');
    if (n > 0) zip_->getRecord(name, out.data(), n);
    return out;
  }

  /// Reads the record, of `n` bytes as size() said, into `dst`.
  void read_into(const std::string& name, void* dst, uint64_t n) {
    if (n > 0) zip_->getRecord(name, dst, n);
  }

 private:
  std::shared_ptr<FdReadAdapter> file_;
  uint64_t file_size_ = 0;
  std::unordered_map<std::string, uint64_t> sizes_;  // case-folded full name -> size
  std::string prefix_;
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> zip_;
};

/// The state of one read: the archive and the storages loaded so far (shared by views).
class TorchFileReader {
 public:
  explicit TorchFileReader(TorchArchive& archive)
      : archive_(archive),
        materialize_budget_(std::max(kMaterializeFloorBytes, archive.file_size())) {}

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
    const at::ScalarType dtype = scalar_type_of(id.dtype);
    const int64_t numel = id.numel;
    const std::string& key_text = id.key;
    auto it = storages_.find(key_text);
    if (it == storages_.end()) {
      auto storage = std::make_shared<Storage>();
      storage->record = "data/" + key_text;
      storage->dtype = dtype;
      if (!archive_.has(storage->record)) {
        throw FormatError("record " + quote_text(storage->record) + " is missing");
      }
      // Checked against the zip directory: at most the member's bytes in the file (or what
      // its deflated bytes can produce).
      const uint64_t n = archive_.size(storage->record);
      storage->bytes = at::empty({static_cast<int64_t>(n)}, at::kByte);
      archive_.read_into(storage->record, storage->bytes.data_ptr(), n);
      it = storages_.emplace(key_text, std::move(storage)).first;
    }
    const Storage& s = *it->second;
    if (s.dtype != dtype) {
      throw FormatError("storage " + quote_text(s.record) + " is used with two dtypes");
    }
    const int64_t elsize = static_cast<int64_t>(c10::elementSize(s.dtype));
    if (numel < 0 || s.bytes.numel() / elsize < numel) {
      throw FormatError("record " + quote_text(s.record) + " has " +
                        std::to_string(s.bytes.numel()) + " bytes, fewer than " +
                        std::to_string(numel) + " elements of " +
                        std::string(c10::toString(s.dtype)));
    }
    return make_object(it->second, "storage");
  }

  PickleValuePtr call(const PickleValue& callable, const std::vector<PickleValuePtr>& args) {
    const std::string& f = callable.text;
    if (f == kRebuildTensorV2) {
      if (args.size() < 6 || args.size() > 7) {
        throw FormatError(f + " with " + std::to_string(args.size()) + " arguments");
      }
      return make_object(rebuild_tensor(args), kPickleTensorType);
    }
    if (f == kRebuildParameter || f == kRebuildParameterWithState) {
      if (args.size() < 3 || args.size() > 4) {
        throw FormatError(f + " with " + std::to_string(args.size()) + " arguments");
      }
      return make_object(as_tensor(arg(args, 0), "parameter data"), kPickleTensorType);
    }
    return call_data_global(callable, args);
  }

  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[,
  // metadata])
  at::Tensor rebuild_tensor(const std::vector<PickleValuePtr>& args) {
    const auto& sv = arg(args, 0);
    if (sv->kind != Kind::kObject || sv->type_name != "storage") {
      throw FormatError("tensor storage is a " + pickle_type(sv));
    }
    const Storage& s = **std::any_cast<std::shared_ptr<Storage>>(&sv->object);
    const int64_t offset = pickle_int(arg(args, 1), "storage offset");
    const std::vector<int64_t> size = pickle_dims(arg(args, 2), "tensor size");
    const std::vector<int64_t> stride = pickle_dims(arg(args, 3), "tensor stride");
    if (size.size() != stride.size()) throw FormatError("tensor size and stride differ in length");
    if (offset < 0) throw FormatError("negative storage offset");

    // Checked arithmetic on every product: the elements and bytes of the tensor, and of its
    // nonzero dimensions even when another is zero (LibTorch computes strides from them).
    const int64_t elsize = static_cast<int64_t>(c10::elementSize(s.dtype));
    int64_t nonzero = 1;
    bool empty = false;
    for (int64_t d : size) {
      if (d == 0) {
        empty = true;
      } else if (__builtin_mul_overflow(nonzero, d, &nonzero)) {
        throw FormatError("tensor size " + shape_text(size) + " overflows 64 bits");
      }
    }
    int64_t nbytes = 0;
    if (__builtin_mul_overflow(nonzero, elsize, &nbytes)) {
      throw FormatError("tensor size " + shape_text(size) + " overflows 64 bits in bytes");
    }
    if (empty) return at::empty(size, at::TensorOptions().dtype(s.dtype));

    // The last element the view touches must lie inside the storage.
    const int64_t available = s.bytes.numel() / elsize;
    int64_t last = offset;
    for (size_t i = 0; i < size.size(); ++i) {
      int64_t span = 0;
      if (__builtin_mul_overflow(size[i] - 1, stride[i], &span) ||
          __builtin_add_overflow(last, span, &last)) {
        throw FormatError("tensor size/stride overflow");
      }
    }
    if (last >= available) {
      throw FormatError("tensor reaches element " + std::to_string(last) + " of record " +
                        quote_text(s.record) + ", which holds " + std::to_string(available));
    }
    at::Tensor typed = s.bytes.narrow(0, 0, available * elsize).view(s.dtype);
    at::Tensor view = typed.as_strided(size, stride, offset);
    // The common case, a tensor that is its whole storage, needs no copy; views (of a shared
    // storage, of part of one, or expanded with stride 0) get their own contiguous memory,
    // within the file's budget.
    if (offset == 0 && view.is_contiguous() && nbytes == s.bytes.numel()) return view;
    if (static_cast<uint64_t>(nbytes) > materialize_budget_) {
      throw FormatError(
          "a tensor of size " + shape_text(size) + " viewing record " + quote_text(s.record) +
          " (" + std::to_string(s.bytes.numel()) + " bytes) would take " + std::to_string(nbytes) +
          " bytes, beyond what the views of this file may take (" +
          std::to_string(materialize_budget_) + " bytes left; a stride-0 expansion?)");
    }
    materialize_budget_ -= static_cast<uint64_t>(nbytes);
    return view.clone(at::MemoryFormat::Contiguous);
  }

  TorchArchive& archive_;
  uint64_t materialize_budget_;
  std::unordered_map<std::string, std::shared_ptr<Storage>> storages_;
};

/// The unpickled top-level object of the archive's data.pkl.
PickleValuePtr read_root(TorchArchive& archive, TorchFileReader& reader) {
  if (archive.has("byteorder")) {
    const std::string order = archive.read("byteorder", 64);
    if (order != "little") {
      throw FormatError("byte order " + quote_text(order) +
                        " is not supported (only little endian)");
    }
  }
  if (!archive.has("data.pkl")) {
    throw FormatError(
        "no data.pkl record: not a torch.save file (a TorchScript archive from torch.jit.save?)");
  }
  const std::string pickle = archive.read("data.pkl", kMaxPickleBytes);
  return unpickle(pickle, reader.hooks());
}

NamedTensor to_named(const std::string& key, const PickleValuePtr& v) {
  at::Tensor t = std::any_cast<at::Tensor>(v->object);
  check_bool_values(key, t);
  return {key, std::move(t)};
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

TensorFileContents read_torch_contents(const std::string& path, const std::string& select) {
  try {
    TorchArchive archive(path);
    TorchFileReader reader(archive);
    const PickleValuePtr root = read_root(archive, reader);
    TensorFileContents out;
    if (select.empty()) {
      for (const auto& [key, value] : flat_state_dict(root)) {
        out.tensors.push_back(to_named(key, value));
      }
      return out;
    }
    PickleSelection selection = select_tensors(root, select);
    for (const auto& [key, value] : selection.tensors) out.tensors.push_back(to_named(key, value));
    out.metadata = std::move(selection.scalars);
    out.skipped = std::move(selection.skipped);
    out.other_tensors = std::move(selection.other_tensors);
    return out;
  } catch (const c10::Error& e) {
    throw FormatError("In " + path + ": " + e.what_without_backtrace());
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

TensorList read_torch_file(const std::string& path) {
  return read_torch_contents(path, "").tensors;
}

void write_torch_file(const std::string& path, const TensorList& tensors) {
  std::vector<at::Tensor> data;
  data.reserve(tensors.size());
  std::unordered_set<std::string_view> seen;
  for (const auto& [key, tensor] : tensors) {
    const std::string where = "In " + path + ": key '" + key + "': ";
    if (!seen.insert(key).second) throw UsageError(where + "duplicate key");
    if (key.find('\0') != std::string::npos || !is_valid_utf8(key)) {
      throw UsageError(where + "key is not valid UTF-8 or contains NUL");
    }
    if (!tensor.defined()) throw UsageError(where + "undefined tensor");
    if (!storage_class(tensor.scalar_type())) {
      throw UsageError(where + "unsupported dtype " +
                       std::string(c10::toString(tensor.scalar_type())));
    }
    data.push_back(tensor.cpu().contiguous());
  }

  try {
    AtomicFile out(path);
    // The zip writer calls back from C code (miniz): no exception may cross it, so a failed
    // write is reported as a short write and rethrown here.
    std::exception_ptr write_error;
    {
      caffe2::serialize::PyTorchStreamWriter zip(
          [&out, &write_error](const void* buf, size_t n) -> size_t {
            if (write_error) return 0;
            try {
              out.write(buf, n);
              return n;
            } catch (...) {
              write_error = std::current_exception();
              return 0;
            }
          });
      try {
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
      } catch (const c10::Error&) {
        if (write_error) std::rethrow_exception(write_error);
        throw;
      }
    }
    if (write_error) std::rethrow_exception(write_error);
    out.commit();
  } catch (const c10::Error& e) {
    throw FormatError("In " + path + ": " + e.what_without_backtrace());
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

}  // namespace shardload
