#include "io/pt/pt_writer.h"

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/key_text.h"
#include "io/pickle.h"
#include "io/torch_dtype.h"
#include "io/zip_writer.h"

namespace shardload {
namespace {

/// The pickle of OrderedDict(key -> tensor), one storage per tensor (storage key i), each
/// tensor pickled as torch.save does (pickle_tensor).
std::string state_dict_pickle(const TensorList& tensors, const std::vector<at::Tensor>& data) {
  PickleWriter w;
  w.global("collections", "OrderedDict");
  w.empty_tuple();
  w.reduce();
  w.mark();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const at::Tensor& t = data[i];
    w.string(tensors[i].key);
    pickle_tensor(w, std::to_string(i), *dtype_from_scalar_type(t.scalar_type()), t.sizes().vec(),
                  t.strides().vec());
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
    const std::string pickle = state_dict_pickle(tensors, data);
    std::vector<TorchArchiveStorage> storages;
    storages.reserve(data.size());
    for (size_t i = 0; i < data.size(); ++i) {
      storages.push_back({std::to_string(i),
                          {static_cast<const std::byte*>(data[i].data_ptr()), data[i].nbytes()}});
    }
    AtomicFile out(path);
    write_torch_archive(pickle, storages, [&out](const void* buf, size_t n) { out.write(buf, n); });
    out.commit();
  } catch (const c10::Error& e) {
    throw FormatError("In " + path + ": " + e.what_without_backtrace());
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

}  // namespace shardload
