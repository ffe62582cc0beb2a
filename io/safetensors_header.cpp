#include "io/safetensors_header.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_set>

#include "core/error.h"
#include "io/key_text.h"
#include "io/read_budget.h"

namespace shardload {
namespace {

using Json = nlohmann::json;

/// top-level object (0) > entry (1) > shape or data_offsets (2): nothing deeper is valid.
constexpr int kMaxContainerDepth = 2;
/// No array of a header holds more than a shape's dimensions.
constexpr size_t kMaxArrayItems = kMaxDims;

/// One entry being parsed: its fields as they arrive.
struct PendingEntry {
  std::string key;
  std::optional<std::string> dtype;
  std::optional<std::vector<uint64_t>> shape;
  std::optional<std::vector<uint64_t>> offsets;
};

SafetensorsEntry check_entry(PendingEntry& p, uint64_t data_size) {
  if (!p.dtype) throw FormatError("no dtype string");
  if (!p.shape) throw FormatError("no shape array");
  if (!p.offsets || p.offsets->size() != 2) throw FormatError("no data_offsets [begin, end]");
  SafetensorsEntry e;
  e.key = std::move(p.key);
  const auto parsed = dtype_from_safetensors(*p.dtype);
  if (!parsed) {
    // F6_E2M3 and F6_E3M2 are safetensors dtypes that PyTorch has no dtype for.
    const bool no_torch = *p.dtype == "F6_E2M3" || *p.dtype == "F6_E3M2";
    throw FormatError("unsupported dtype " + quote_text(*p.dtype, 40) +
                      (no_torch ? " (PyTorch has no such dtype)" : ""));
  }
  e.dtype = *parsed;
  // F4 counts 4-bit values; PyTorch's float4_e2m1fn_x2 holds two of them per element, along
  // the last dimension.
  if (e.dtype == DType::kFloat4E2M1FNx2) {
    if (p.shape->empty() || p.shape->back() % 2 != 0) {
      throw FormatError("F4 shape " + shape_str(Shape(p.shape->begin(), p.shape->end())) +
                        ": the last dimension must be even (two 4-bit values per byte)");
    }
    p.shape->back() /= 2;
  }
  // The product of the nonzero dimensions must fit too: LibTorch computes strides from it, for
  // zero-size tensors as well.
  uint64_t nonzero = 1;
  bool empty = false;
  for (const uint64_t n : *p.shape) {
    if (n == 0) {
      empty = true;
    } else if (__builtin_mul_overflow(nonzero, n, &nonzero) ||
               nonzero > static_cast<uint64_t>(INT64_MAX)) {
      throw FormatError("shape overflows");
    }
    e.shape.push_back(static_cast<int64_t>(n));
  }
  const uint64_t numel = empty ? 0 : nonzero;
  e.begin = (*p.offsets)[0];
  e.end = (*p.offsets)[1];
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
}

/// Builds the header from parse events (nlohmann's SAX interface): no JSON tree. Every limit is
/// checked as its event arrives, before anything is kept: nesting, keys (each once per object,
/// found in a hash set: linear time in all), array lengths, and the bytes kept, against the
/// parse budget of the header's size.
class HeaderHandler final : public nlohmann::json_sax<Json> {
 public:
  HeaderHandler(uint64_t data_size, uint64_t header_bytes)
      : data_size_(data_size),
        budget_(parse_budget(header_bytes),
                "header of " + std::to_string(header_bytes) + " bytes: parsed state") {}

  SafetensorsHeader take() { return std::move(out_); }

  bool start_object(std::size_t) override {
    open_container();
    if (depth_ == 1) return true;  // the top level
    if (depth_ == 2) {
      if (in_metadata()) {
        if (saw_metadata_) throw FormatError("two __metadata__ objects");
        saw_metadata_ = true;
        section_ = Section::kMetadata;
      } else {
        section_ = Section::kEntry;
        entry_ = PendingEntry{top_key_, {}, {}, {}};
        fields_.clear();
      }
      return true;
    }
    // An object as a field of an entry (depth 3): only ignored fields may hold one.
    in_entry_value("a JSON object");
    if (field_ == Field::kDtype) entry_error("no dtype string");
    if (field_ == Field::kShape) entry_error("no shape array");
    if (field_ == Field::kOffsets) entry_error("no data_offsets [begin, end]");
    field_ = Field::kIgnored;
    array_items_ = 0;
    return true;
  }

  bool end_object() override {
    if (depth_ == 2 && section_ == Section::kEntry) {
      try {
        const uint64_t dims = entry_.shape ? entry_.shape->size() : 0;
        charge(sizeof(SafetensorsEntry) + entry_.key.size() + 8 * dims, "an entry");
        out_.entries.push_back(check_entry(entry_, data_size_));
      } catch (...) {
        rethrow_with_context("key " + quote_text(top_key_) + ": ");
      }
    }
    if (depth_ == 2) section_ = Section::kNone;
    if (depth_ == 3) field_ = Field::kNone;
    --depth_;
    return true;
  }

  bool start_array(std::size_t) override {
    open_container();
    if (depth_ == 1) throw FormatError("header is not a JSON object");
    if (depth_ == 2) top_value_not_object("a JSON array");
    in_entry_value("a JSON array");
    array_items_ = 0;
    if (field_ == Field::kShape) {
      entry_.shape.emplace();
    } else if (field_ == Field::kOffsets) {
      entry_.offsets.emplace();
    } else if (field_ == Field::kDtype) {
      entry_error("no dtype string");
    } else {
      field_ = Field::kIgnored;
    }
    return true;
  }

  bool end_array() override {
    if (depth_ == 3) field_ = Field::kNone;
    --depth_;
    return true;
  }

  bool key(string_t& key) override {
    if (depth_ == 1) {
      if (++top_keys_ > kMaxSafetensorsKeys) {
        throw FormatError("header has more than " + std::to_string(kMaxSafetensorsKeys) + " keys");
      }
      charge(key.size() + 64, "a key");
      if (!keys_.insert(key).second) {
        throw FormatError("header has key " + quote_text(key) + " twice in one object");
      }
      top_key_ = key;
      if (!in_metadata()) {
        try {
          check_tensor_key(key);
        } catch (...) {
          rethrow_with_context("key " + quote_text(key) + ": ");
        }
      }
      return true;
    }
    if (section_ == Section::kMetadata) {
      if (out_.metadata.size() >= kMaxSafetensorsKeys) {
        throw FormatError("__metadata__ has more than " + std::to_string(kMaxSafetensorsKeys) +
                          " entries");
      }
      charge(2 * key.size() + 128, "a __metadata__ key");
      if (!metadata_keys_.insert(key).second) {
        throw FormatError("header has key " + quote_text(key) + " twice in one object");
      }
      meta_key_ = std::move(key);
      return true;
    }
    if (depth_ == 2) {  // a field of an entry
      if (!fields_.insert(key).second) {
        throw FormatError("header has key " + quote_text(key) + " twice in one object");
      }
      field_ = key == "dtype"          ? Field::kDtype
               : key == "shape"        ? Field::kShape
               : key == "data_offsets" ? Field::kOffsets
                                       : Field::kIgnored;
    }
    return true;  // keys inside ignored objects
  }

  bool string(string_t& value) override {
    if (depth_ == 2 && section_ == Section::kMetadata) {
      charge(value.size(), "a __metadata__ value");
      out_.metadata.emplace_back(std::move(meta_key_), std::move(value));
      return true;
    }
    if (depth_ == 2 && section_ == Section::kEntry && field_ == Field::kDtype) {
      entry_.dtype = value.substr(0, 64);
      field_ = Field::kNone;
      return true;
    }
    return scalar("a string", quote_text(value, 40));
  }
  bool null() override { return scalar("null", "null"); }
  bool boolean(bool v) override { return scalar("a boolean", v ? "true" : "false"); }
  bool number_integer(number_integer_t v) override { return scalar("a number", std::to_string(v)); }
  bool number_unsigned(number_unsigned_t v) override {
    if (depth_ == 3 && (field_ == Field::kShape || field_ == Field::kOffsets)) {
      std::vector<uint64_t>& items = field_ == Field::kShape ? *entry_.shape : *entry_.offsets;
      if (field_ == Field::kShape && items.size() >= static_cast<size_t>(kMaxDims)) {
        entry_error("shape of more than " + std::to_string(kMaxDims) + " dimensions (at most " +
                    std::to_string(kMaxDims) + ")");
      }
      if (field_ == Field::kOffsets && items.size() >= 2) {
        entry_error("no data_offsets [begin, end]");
      }
      items.push_back(v);
      return true;
    }
    return scalar("a number", std::to_string(v));
  }
  bool number_float(number_float_t, const string_t& text) override {
    return scalar("a number", text.substr(0, 40));
  }
  bool binary(binary_t&) override { throw FormatError("header holds a binary JSON value"); }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    throw FormatError(std::string("header is not valid JSON: ") + e.what());
  }

 private:
  enum class Section { kNone, kMetadata, kEntry };
  enum class Field { kNone, kDtype, kShape, kOffsets, kIgnored };

  bool in_metadata() const { return top_key_ == "__metadata__"; }

  void charge(uint64_t bytes, const char* what) { budget_.charge(bytes, what); }

  void open_container() {
    if (depth_ > kMaxContainerDepth) {
      throw FormatError("header nests JSON deeper than " + std::to_string(kMaxContainerDepth + 1) +
                        " levels");
    }
    ++depth_;
  }

  [[noreturn]] void entry_error(const std::string& what) const {
    throw FormatError("key " + quote_text(top_key_) + ": " + what);
  }

  [[noreturn]] void top_value_not_object(const char* type) const {
    if (in_metadata()) throw FormatError("__metadata__ is not a JSON object");
    entry_error(std::string("entry is not a JSON object (it is ") + type + ")");
  }

  /// A container opened at depth 3: the value of an entry's field (a metadata value must be a
  /// string); nothing deeper gets this far.
  void in_entry_value(const char* type) const {
    if (section_ == Section::kMetadata) {
      throw FormatError("__metadata__ entry " + quote_text(meta_key_) + " is " + type +
                        ", not a string");
    }
  }

  /// A scalar that is not a metadata string, a dtype or a shape/offset number.
  bool scalar(const char* type, const std::string& text) {
    if (depth_ == 0) throw FormatError("header is not a JSON object");
    if (depth_ == 1) top_value_not_object(type);
    if (section_ == Section::kMetadata) {
      throw FormatError("__metadata__ entry " + quote_text(meta_key_) + " is " + type +
                        ", not a string");
    }
    if (depth_ == 3 && field_ == Field::kShape) {
      entry_error("shape entry is not a non-negative integer: " + text);
    }
    if (depth_ == 3 && field_ == Field::kOffsets) {
      entry_error("data offset is not a non-negative integer: " + text);
    }
    if (depth_ == 2 && field_ == Field::kDtype) entry_error("no dtype string");
    if (depth_ == 2 && (field_ == Field::kShape || field_ == Field::kOffsets)) {
      entry_error(field_ == Field::kShape ? "no shape array" : "no data_offsets [begin, end]");
    }
    // An ignored field's value, or an item of an ignored array: counted, never kept.
    if (depth_ == 3 && ++array_items_ > kMaxArrayItems) {
      entry_error("an array of more than " + std::to_string(kMaxArrayItems) + " items");
    }
    if (depth_ == 2) field_ = Field::kNone;
    return true;
  }

  uint64_t data_size_;
  ReadBudget budget_;
  SafetensorsHeader out_;
  int depth_ = 0;
  Section section_ = Section::kNone;
  Field field_ = Field::kNone;
  bool saw_metadata_ = false;
  uint64_t top_keys_ = 0;
  size_t array_items_ = 0;
  std::string top_key_;
  std::string meta_key_;
  PendingEntry entry_;
  std::unordered_set<std::string> keys_;
  std::unordered_set<std::string> metadata_keys_;
  std::unordered_set<std::string> fields_;
};

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
  if (json.size() > kMaxSafetensorsHeaderBytes) {
    throw FormatError("header of " + std::to_string(json.size()) + " bytes exceeds the limit of " +
                      std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  HeaderHandler handler(data_size, json.size());
  Json::sax_parse(json.begin(), json.end(), &handler);
  SafetensorsHeader out = handler.take();
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
