#include "io/safetensors_header.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/error.h"
#include "io/key_text.h"

namespace shardload {
namespace {

using Json = nlohmann::ordered_json;

/// top-level object (0) > entry (1) > shape or data_offsets (2): nothing deeper is valid.
constexpr int kMaxContainerDepth = 2;

uint64_t as_u64(const Json& v, const char* what) {
  if (!v.is_number_unsigned()) {
    // Only scalars reach here (deeper values were refused while parsing); dump() is flat.
    throw FormatError(std::string(what) + " is not a non-negative integer: " +
                      v.dump(-1, ' ', false, Json::error_handler_t::replace).substr(0, 100));
  }
  return v.get<uint64_t>();
}

SafetensorsEntry parse_entry(const std::string& key, const Json& v, uint64_t data_size) {
  try {
    check_tensor_key(key);
    if (!v.is_object()) throw FormatError("entry is not a JSON object");
    if (!v.contains("dtype") || !v["dtype"].is_string()) throw FormatError("no dtype string");
    if (!v.contains("shape") || !v["shape"].is_array()) throw FormatError("no shape array");
    if (!v.contains("data_offsets") || !v["data_offsets"].is_array() ||
        v["data_offsets"].size() != 2) {
      throw FormatError("no data_offsets [begin, end]");
    }
    SafetensorsEntry e;
    e.key = key;
    const std::string dtype = v["dtype"].get<std::string>();
    const auto parsed = dtype_from_safetensors(dtype);
    if (!parsed) throw FormatError("unsupported dtype " + quote_text(dtype, 40));
    e.dtype = *parsed;
    const Json& shape = v["shape"];
    if (shape.size() > kMaxTensorDims) {
      throw FormatError("shape of " + std::to_string(shape.size()) + " dimensions (at most " +
                        std::to_string(kMaxTensorDims) + ")");
    }
    // The product of the nonzero dimensions must fit too: LibTorch computes strides from it,
    // for zero-size tensors as well.
    uint64_t nonzero = 1;
    bool empty = false;
    for (const auto& d : shape) {
      const uint64_t n = as_u64(d, "shape entry");
      if (n == 0) {
        empty = true;
      } else if (__builtin_mul_overflow(nonzero, n, &nonzero) ||
                 nonzero > static_cast<uint64_t>(INT64_MAX)) {
        throw FormatError("shape overflows");
      }
      e.shape.push_back(static_cast<int64_t>(n));
    }
    const uint64_t numel = empty ? 0 : nonzero;
    e.begin = as_u64(v["data_offsets"][0], "data offset");
    e.end = as_u64(v["data_offsets"][1], "data offset");
    if (e.begin > e.end || e.end > data_size) {
      throw FormatError("data_offsets [" + std::to_string(e.begin) + ", " + std::to_string(e.end) +
                        "] outside the " + std::to_string(data_size) + " data bytes");
    }
    uint64_t nbytes = 0;
    const bool overflow =
        __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(e.dtype)), &nbytes);
    if (overflow || nbytes != e.end - e.begin) {
      throw FormatError("data_offsets span " + std::to_string(e.end - e.begin) +
                        " bytes, but shape and dtype need " +
                        (overflow ? std::string("more than 2^64") : std::to_string(nbytes)));
    }
    return e;
  } catch (...) {
    rethrow_with_context("key " + quote_text(key) + ": ");
  }
}

/// Parses `text`, refusing (before building them) containers nested too deep and duplicate
/// keys in an object.
Json parse_bounded(std::string_view text) {
  std::vector<std::unordered_set<std::string>> keys;  // one set per open object
  auto callback = [&keys](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
      case Json::parse_event_t::array_start:
        if (depth > kMaxContainerDepth) {
          throw FormatError("header nests JSON deeper than " +
                            std::to_string(kMaxContainerDepth + 1) + " levels");
        }
        if (event == Json::parse_event_t::object_start) keys.emplace_back();
        break;
      case Json::parse_event_t::object_end:
        keys.pop_back();
        break;
      case Json::parse_event_t::key: {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!keys.back().insert(key).second) {
          throw FormatError("header has key " + quote_text(key) + " twice in one object");
        }
        break;
      }
      default:
        break;
    }
    return true;
  };
  try {
    return Json::parse(text.begin(), text.end(), callback);
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(std::string("header is not valid JSON: ") + e.what());
  }
}

}  // namespace

uint64_t safetensors_header_length(const unsigned char (&prefix)[8], uint64_t file_size) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t{prefix[i]} << (8 * i);
  if (n > kMaxSafetensorsHeaderBytes) {
    throw FormatError("header length " + std::to_string(n) + " exceeds the limit of " +
                      std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  if (file_size < 8 || n > file_size - 8) {
    throw FormatError("header length " + std::to_string(n) + " exceeds the file size " +
                      std::to_string(file_size));
  }
  return n;
}

SafetensorsHeader parse_safetensors_header(std::string_view json, uint64_t data_size) {
  const Json root = parse_bounded(json);
  if (!root.is_object()) throw FormatError("header is not a JSON object");
  SafetensorsHeader out;
  out.entries.reserve(root.size());
  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) throw FormatError("__metadata__ is not a JSON object");
      for (const auto& [name, text] : value.items()) {
        if (!text.is_string()) {
          throw FormatError("__metadata__ entry " + quote_text(name) + " is a " + text.type_name() +
                            ", not a string");
        }
        out.metadata.emplace_back(name, text.get<std::string>());
      }
      continue;
    }
    out.entries.push_back(parse_entry(key, value, data_size));
  }
  // File order is data order; ties (zero-size tensors) keep the header's key order.
  std::stable_sort(
      out.entries.begin(), out.entries.end(),
      [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.begin < b.begin; });
  const SafetensorsEntry* previous = nullptr;  // the last tensor with data
  for (const SafetensorsEntry& e : out.entries) {
    if (e.begin == e.end) continue;
    if (previous && e.begin < previous->end) {
      throw FormatError("key " + quote_text(e.key) + ": data overlaps that of key " +
                        quote_text(previous->key));
    }
    previous = &e;
  }
  return out;
}

}  // namespace shardload
