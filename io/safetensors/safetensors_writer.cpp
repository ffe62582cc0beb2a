#include "io/safetensors/safetensors_writer.h"

#include <ATen/core/Tensor.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/key_text.h"
#include "io/safetensors_header.h"
#include "io/torch_dtype.h"

namespace shardload {
namespace {

/// The dtype's safetensors code; nullopt for dtypes the format lacks (complex32, complex128,
/// and what shardload itself lacks).
std::optional<std::string_view> name_of(at::ScalarType type) {
  auto dtype = dtype_from_scalar_type(type);
  if (!dtype || safetensors_code(*dtype).empty()) return std::nullopt;
  return safetensors_code(*dtype);
}

}  // namespace

void write_safetensors_file(const std::string& path, const TensorList& tensors,
                            const std::vector<std::pair<std::string, std::string>>& metadata) {
  std::vector<at::Tensor> data;
  data.reserve(tensors.size());
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  for (const auto& [name, value] : metadata) {
    if (name != "format") header["__metadata__"][name] = value;
  }
  std::unordered_set<std::string_view> seen;
  uint64_t offset = 0;
  for (const auto& [key, tensor] : tensors) {
    const std::string where = "In " + path + ": key '" + key + "': ";
    if (key == "__metadata__") throw UsageError(where + "reserved key");
    if (!seen.insert(key).second) throw UsageError(where + "duplicate key");
    if (key.find('\0') != std::string::npos || !is_valid_utf8(key)) {
      throw UsageError(where + "key is not valid UTF-8 or contains NUL");
    }
    if (!tensor.defined()) throw UsageError(where + "undefined tensor");
    const auto dtype = name_of(tensor.scalar_type());
    if (!dtype) {
      throw UsageError(where + "dtype " + std::string(c10::toString(tensor.scalar_type())) +
                       " has no safetensors dtype (save it as .pt or a shardload checkpoint)");
    }
    std::vector<int64_t> shape = tensor.sizes().vec();
    if (tensor.scalar_type() == at::kFloat4_e2m1fn_x2) {
      // F4 counts 4-bit values: two per element, along the last dimension.
      if (shape.empty()) throw UsageError(where + "a 0-d float4_e2m1fn_x2 has no F4 shape");
      shape.back() *= 2;
    }
    data.push_back(tensor.cpu().contiguous());
    const uint64_t nbytes = data.back().nbytes();
    header[key] = {{"dtype", std::string(*dtype)},
                   {"shape", shape},
                   {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    throw UsageError("In " + path + ": a metadata entry is not valid UTF-8: " + e.what());
  }
  // Pad with spaces so that the data starts 8-byte aligned, as the safetensors writers do.
  text.append((8 - text.size() % 8) % 8, ' ');

  try {
    AtomicFile out(path);
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(text.size() >> (8 * i));
    out.write(len_bytes, 8);
    out.write(text.data(), text.size());
    for (const at::Tensor& t : data) {
      if (t.nbytes() > 0) out.write(t.data_ptr(), t.nbytes());
    }
    out.commit();
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

}  // namespace shardload
