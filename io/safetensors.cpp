#include "io/safetensors.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
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

namespace fs = std::filesystem;

std::optional<std::string_view> name_of(at::ScalarType type) {
  auto dtype = dtype_from_scalar_type(type);
  return dtype ? std::optional(safetensors_code(*dtype)) : std::nullopt;
}

/// Reads exactly `n` bytes at `offset`.
void read_at(std::ifstream& in, uint64_t offset, char* buf, uint64_t n, const std::string& what) {
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(buf, static_cast<std::streamsize>(n));
  if (!in) throw FormatError("cannot read " + what);
}

}  // namespace

TensorFileContents read_safetensors_contents(const std::string& path) {
  try {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw FormatError(std::string("cannot open file: ") + std::strerror(errno));
    std::error_code ec;
    const uint64_t file_size = fs::file_size(path, ec);
    if (ec) throw FormatError("cannot stat file: " + ec.message());
    if (file_size < 8) throw FormatError("file too short for a safetensors header");

    unsigned char prefix[8];
    read_at(in, 0, reinterpret_cast<char*>(prefix), 8, "the header length");
    const uint64_t header_size = safetensors_header_length(prefix, file_size);
    std::string json(header_size, '\0');
    read_at(in, 8, json.data(), header_size, "the header");
    const uint64_t data_start = 8 + header_size;
    const SafetensorsHeader header = parse_safetensors_header(json, file_size - data_start);

    TensorFileContents out;
    out.metadata = header.metadata;
    out.tensors.reserve(header.entries.size());
    for (const SafetensorsEntry& e : header.entries) {
      // Inside the file and not overlapping: the tensors together hold at most the file's size.
      at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(scalar_type_of(e.dtype)));
      if (e.end > e.begin) {
        read_at(in, data_start + e.begin, static_cast<char*>(t.data_ptr()), e.end - e.begin,
                "the data of key " + quote_text(e.key));
      }
      check_bool_values(e.key, t);
      out.tensors.push_back({e.key, std::move(t)});
    }
    return out;
  } catch (const c10::Error& e) {
    throw FormatError("In " + path + ": " + e.what_without_backtrace());
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

TensorList read_safetensors_file(const std::string& path) {
  return read_safetensors_contents(path).tensors;
}

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
      throw UsageError(where + "unsupported dtype " +
                       std::string(c10::toString(tensor.scalar_type())));
    }
    data.push_back(tensor.cpu().contiguous());
    const uint64_t nbytes = data.back().nbytes();
    header[key] = {{"dtype", std::string(*dtype)},
                   {"shape", tensor.sizes().vec()},
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
