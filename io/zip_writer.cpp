#include "io/zip_writer.h"

#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <exception>
#include <string>
#include <unordered_set>

#include "core/error.h"

namespace shardload {

uint64_t write_torch_archive(std::string_view data_pkl,
                             std::span<const TorchArchiveStorage> storages, const ByteSink& sink) {
  std::unordered_set<std::string_view> keys;
  for (const TorchArchiveStorage& storage : storages) {
    if (storage.key.empty() || !keys.insert(storage.key).second) {
      throw UsageError("torch.save archive: storage key '" + storage.key + "' is empty or repeats");
    }
  }
  uint64_t written = 0;
  try {
    // The zip writer calls back from C code (miniz): no exception may cross it, so a failed
    // write is reported as a short write and rethrown here.
    std::exception_ptr write_error;
    {
      caffe2::serialize::PyTorchStreamWriter zip(
          [&sink, &write_error, &written](const void* buf, size_t n) -> size_t {
            if (write_error) return 0;
            try {
              sink(buf, n);
              written += n;
              return n;
            } catch (...) {
              write_error = std::current_exception();
              return 0;
            }
          });
      try {
        // The same records, in the same order, as torch.save; the writer adds "version" and
        // ".data/serialization_id".
        zip.writeRecord("data.pkl", data_pkl.data(), data_pkl.size());
        zip.writeRecord(".format_version", "1", 1);
        zip.writeRecord(".storage_alignment", "64", 2);
        zip.writeRecord("byteorder", "little", 6);
        for (const TorchArchiveStorage& storage : storages) {
          zip.writeRecord("data/" + storage.key, storage.bytes.data(), storage.bytes.size());
        }
        zip.writeEndOfFile();
      } catch (const c10::Error&) {
        if (write_error) std::rethrow_exception(write_error);
        throw;
      }
    }
    if (write_error) std::rethrow_exception(write_error);
  } catch (const c10::Error& e) {
    throw FormatError(std::string("torch.save archive: ") + e.what_without_backtrace());
  }
  return written;
}

std::string torch_archive(std::string_view data_pkl,
                          std::span<const TorchArchiveStorage> storages) {
  std::string out;
  write_torch_archive(data_pkl, storages, [&out](const void* data, size_t n) {
    out.append(static_cast<const char*>(data), n);
  });
  return out;
}

Shape contiguous_strides(const Shape& sizes) {
  Shape strides(sizes.size());
  int64_t stride = 1;
  for (size_t i = sizes.size(); i-- > 0;) {
    strides[i] = stride;
    stride = checked_mul(stride, std::max<int64_t>(sizes[i], 1), "strides");
  }
  return strides;
}

void pickle_tensor(PickleWriter& w, std::string_view storage_key, DType dtype, const Shape& sizes,
                   const Shape& strides) {
  const std::string_view storage = torch_storage_class(dtype);
  const int64_t elements = numel(sizes);
  w.global("torch._utils", storage.empty() ? "_rebuild_tensor_v3" : "_rebuild_tensor_v2");
  w.mark();
  w.mark();
  w.string("storage");
  if (storage.empty()) {
    w.global("torch.storage", "UntypedStorage");
  } else {
    w.global("torch", storage);
  }
  w.string(storage_key);
  w.string("cpu");
  // A typed storage counts elements, an untyped one bytes.
  w.integer(storage.empty() ? checked_mul(elements, dtype_size(dtype), "storage bytes") : elements);
  w.tuple_from_mark();
  w.persistent_id();
  w.integer(0);
  w.int_tuple(sizes);
  w.int_tuple(strides);
  w.boolean(false);
  w.global("collections", "OrderedDict");
  w.empty_tuple();
  w.reduce();
  if (storage.empty()) w.global("torch", dtype_name(dtype));
  w.tuple_from_mark();
  w.reduce();
}

}  // namespace shardload
