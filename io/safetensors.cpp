#include "io/safetensors.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <unordered_set>

#include "core/error.h"
#include "io/torch_dtype.h"

namespace shardload {
namespace {

namespace fs = std::filesystem;

std::optional<at::ScalarType> dtype_of(std::string_view code) {
  auto dtype = dtype_from_safetensors(code);
  return dtype ? std::optional(scalar_type_of(*dtype)) : std::nullopt;
}

std::optional<std::string_view> name_of(at::ScalarType type) {
  auto dtype = dtype_from_scalar_type(type);
  return dtype ? std::optional(safetensors_code(*dtype)) : std::nullopt;
}

/// One validated header entry.
struct Entry {
  std::string key;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin;
  uint64_t end;
};

uint64_t as_u64(const nlohmann::ordered_json& v, const char* what) {
  if (!v.is_number_unsigned()) {
    throw FormatError(std::string(what) + " is not a non-negative integer: " + v.dump());
  }
  return v.get<uint64_t>();
}

Entry parse_entry(const std::string& key, const nlohmann::ordered_json& v, uint64_t data_size) {
  try {
    if (!v.is_object()) throw FormatError("entry is not a JSON object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) throw FormatError("no dtype string");
    if (!v.contains("shape") || !v["shape"].is_array()) throw FormatError("no shape array");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2) {
      throw FormatError("no data_offsets [begin, end]");
    }
    Entry e;
    e.key = key;
    const std::string dtype = v["dtype"].get<std::string>();
    const auto scalar = dtype_of(dtype);
    if (!scalar) throw FormatError("unsupported dtype '" + dtype + "'");
    e.dtype = *scalar;
    uint64_t numel = 1;
    for (const auto& d : v["shape"]) {
      const uint64_t n = as_u64(d, "shape entry");
      if (n > static_cast<uint64_t>(INT64_MAX) || __builtin_mul_overflow(numel, n, &numel)) {
        throw FormatError("shape overflows");
      }
      e.shape.push_back(static_cast<int64_t>(n));
    }
    e.begin = as_u64(v["data_offsets"][0], "data offset");
    e.end = as_u64(v["data_offsets"][1], "data offset");
    if (e.begin > e.end || e.end > data_size) {
      throw FormatError("data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                        "] outside the " + std::to_string(data_size) + " data bytes");
    }
    uint64_t nbytes = 0;
    if (__builtin_mul_overflow(numel, c10::elementSize(e.dtype), &nbytes) ||
        nbytes != e.end - e.begin) {
      throw FormatError("data_offsets span " + std::to_string(e.end - e.begin) +
                        " bytes, but shape and dtype need " + std::to_string(nbytes));
    }
    return e;
  } catch (...) {
    rethrow_with_context("key '" + key + "': ");
  }
}

}  // namespace

TensorList read_safetensors_file(const std::string& path) {
  try {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw FormatError(std::string("cannot open file: ") + std::strerror(errno));
    std::error_code ec;
    const uint64_t file_size = fs::file_size(path, ec);
    if (ec) throw FormatError("cannot stat file: " + ec.message());
    if (file_size < 8) throw FormatError("file too short for a safetensors header");

    unsigned char len_bytes[8];
    in.read(reinterpret_cast<char*>(len_bytes), 8);
    uint64_t header_size = 0;
    for (int i = 0; i < 8; ++i) header_size |= uint64_t{len_bytes[i]} << (8 * i);
    if (header_size > file_size - 8) {
      throw FormatError("header length " + std::to_string(header_size) + " exceeds the file size " +
                        std::to_string(file_size));
    }
    std::string header(header_size, '\0');
    in.read(header.data(), static_cast<std::streamsize>(header_size));
    if (!in) throw FormatError("cannot read the header");
    const uint64_t data_start = 8 + header_size;
    const uint64_t data_size = file_size - data_start;

    // ordered_json keeps the header's order, which breaks ties between zero-size tensors.
    nlohmann::ordered_json json;
    try {
      json = nlohmann::ordered_json::parse(header);
    } catch (const nlohmann::json::exception& e) {
      throw FormatError(std::string("header is not valid JSON: ") + e.what());
    }
    if (!json.is_object()) throw FormatError("header is not a JSON object");

    std::vector<Entry> entries;
    entries.reserve(json.size());
    for (const auto& [key, value] : json.items()) {
      if (key == "__metadata__") {
        if (!value.is_object()) throw FormatError("__metadata__ is not a JSON object");
        continue;
      }
      entries.push_back(parse_entry(key, value, data_size));
    }
    // File order is data order; ties (zero-size tensors) keep the header's key order.
    std::stable_sort(entries.begin(), entries.end(),
                     [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
    const Entry* previous = nullptr;  // the last tensor with data
    for (const Entry& e : entries) {
      if (e.begin == e.end) continue;
      if (previous && e.begin < previous->end) {
        throw FormatError("key '" + e.key + "': data overlaps that of key '" + previous->key + "'");
      }
      previous = &e;
    }

    TensorList out;
    out.reserve(entries.size());
    for (const Entry& e : entries) {
      at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype));
      if (e.end > e.begin) {
        in.seekg(static_cast<std::streamoff>(data_start + e.begin));
        in.read(static_cast<char*>(t.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
        if (!in) throw FormatError("key '" + e.key + "': cannot read its data");
      }
      out.push_back({e.key, std::move(t)});
    }
    return out;
  } catch (const c10::Error& e) {
    throw FormatError("In " + path + ": " + e.what_without_backtrace());
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

void write_safetensors_file(const std::string& path, const TensorList& tensors) {
  std::vector<at::Tensor> data;
  data.reserve(tensors.size());
  nlohmann::ordered_json header;
  header["__metadata__"] = {{"format", "pt"}};
  std::unordered_set<std::string_view> seen;
  uint64_t offset = 0;
  for (const auto& [key, tensor] : tensors) {
    const std::string where = "In " + path + ": key '" + key + "': ";
    if (key == "__metadata__") throw UsageError(where + "reserved key");
    if (!seen.insert(key).second) throw UsageError(where + "duplicate key");
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
    throw UsageError("In " + path + ": a key is not valid UTF-8: " + e.what());
  }
  // Pad with spaces so that the data starts 8-byte aligned, as the safetensors writers do.
  text.append((8 - text.size() % 8) % 8, ' ');

  const std::string tmp = path + ".tmp";
  try {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw FormatError(std::string("cannot create file: ") + std::strerror(errno));
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<unsigned char>(text.size() >> (8 * i));
    out.write(reinterpret_cast<const char*>(len_bytes), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const at::Tensor& t : data) {
      if (t.nbytes() > 0) {
        out.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.nbytes()));
      }
    }
    out.close();
    if (!out) throw FormatError(std::string("cannot write file: ") + std::strerror(errno));
    std::error_code ec;
    fs::rename(tmp, path, ec);
    if (ec) throw FormatError("cannot rename " + tmp + " into place: " + ec.message());
  } catch (...) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    rethrow_with_context("In " + path + ": ");
  }
}

}  // namespace shardload
