#include "io/pt/pt_writer.h"

#include <ATen/core/Tensor.h>
#include <caffe2/serialize/inline_container.h>

#include <exception>
#include <optional>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/key_text.h"
#include "io/pt/pickle.h"
#include "io/torch_dtype.h"

namespace shardload {
namespace {

/// The pickle of OrderedDict(key -> tensor), one storage per tensor, as torch.save writes it:
/// _rebuild_tensor_v2(typed storage i, 0, size, stride, False, OrderedDict()) for the dtypes
/// with a legacy storage class, _rebuild_tensor_v3(UntypedStorage i, ..., dtype) for the others
/// (uint16-64, complex32, float8, float4), whose storage counts bytes.
std::string state_dict_pickle(const TensorList& tensors, const std::vector<at::Tensor>& data) {
  PickleWriter w;
  w.global("collections", "OrderedDict");
  w.empty_tuple();
  w.reduce();
  w.mark();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = data[i];
    const DType dtype = *dtype_from_scalar_type(t.scalar_type());
    const std::string_view storage = torch_storage_class(dtype);
    w.string(tensors[i].key);
    w.global("torch._utils", storage.empty() ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
    w.mark();
    w.mark();
    w.string("storage");
    if (storage.empty()) {
      w.global("torch.storage", "UntypedStorage");
    } else {
      w.global("torch", storage);
    }
    w.string(std::to_string(i));
    w.string("cpu");
    w.integer(storage.empty() ? static_cast<int64_t>(t.nbytes()) : t.numel());
    w.tuple_from_mark();
    w.persistent_id();
    w.integer(0);
    w.int_tuple(t.sizes().vec());
    w.int_tuple(t.strides().vec());
    w.boolean(false);
    w.global("collections", "OrderedDict");
    w.empty_tuple();
    w.reduce();
    if (storage.empty()) w.global("torch", dtype_name(dtype));
    w.tuple_from_mark();
    w.reduce();
  }
  w.set_items();
  return w.finish();
}

}  // namespace

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
    if (!dtype_from_scalar_type(tensor.scalar_type())) {
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
