#include "io/safetensors/hf_index.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <unordered_set>

#include "core/error.h"
#include "io/file_bytes.h"
#include "io/key_text.h"

namespace shardload {
namespace {

using Json = nlohmann::json;

/// Builds an HfIndex from parse events, keeping only what the index needs: no JSON tree, so
/// that memory grows with the keys kept, each checked as it arrives.
class IndexHandler final : public nlohmann::json_sax<Json> {
 public:
  HfIndex take() {
    std::vector<std::string> names;
    names.reserve(file_of_name_.size());
    for (const auto& [name, unused] : file_of_name_) names.push_back(name);  // sorted: a map
    std::map<std::string, int32_t> number;
    for (size_t i = 0; i < names.size(); ++i) number[names[i]] = static_cast<int32_t>(i);
    HfIndex out;
    out.weight_map.reserve(keys_.size());
    for (size_t i = 0; i < keys_.size(); ++i) {
      out.weight_map.emplace_back(std::move(keys_[i]), number.at(file_names_[i]));
    }
    out.files = std::move(names);
    out.metadata = std::move(metadata_);
    if (!saw_weight_map_) throw FormatError("no \"weight_map\" object");
    return out;
  }

  bool start_object(std::size_t) override {
    if (depth_ >= 2) {
      throw FormatError(std::string("a JSON object inside ") + where() +
                        " (an index nests at most two levels)");
    }
    if (depth_ == 1) {
      section_ = member_ == "weight_map" ? Section::kWeightMap
                 : member_ == "metadata" ? Section::kMetadata
                                         : Section::kOther;
      if (section_ == Section::kWeightMap) {
        if (saw_weight_map_) throw FormatError("two \"weight_map\" objects");
        saw_weight_map_ = true;
      }
    }
    ++depth_;
    return true;
  }
  bool end_object() override {
    --depth_;
    if (depth_ == 1) section_ = Section::kNone;
    return true;
  }
  bool start_array(std::size_t) override {
    throw FormatError(std::string("a JSON array in ") + where() + " (an index has none)");
  }
  bool end_array() override { return true; }
  bool key(string_t& key) override {
    if (depth_ == 1) {
      member_ = key;
      return true;
    }
    if (section_ == Section::kWeightMap) {
      if (key.size() > kMaxHfKeyBytes) {
        throw FormatError("weight_map key " + quote_text(key, 100) + " of " +
                          std::to_string(key.size()) + " bytes (at most " +
                          std::to_string(kMaxHfKeyBytes) + ")");
      }
      if (keys_.size() >= kMaxHfIndexEntries) {
        throw FormatError("weight_map has more than " + std::to_string(kMaxHfIndexEntries) +
                          " keys");
      }
      check_tensor_key(key);
      if (!seen_.insert(key).second) {
        throw FormatError("weight_map names key " + quote_text(key) + " twice");
      }
    }
    entry_ = key;
    return true;
  }
  bool string(string_t& value) override {
    if (depth_ == 2 && section_ == Section::kWeightMap) {
      if (!is_plain_file_name(value)) {
        throw FormatError("key " + quote_text(entry_) + ": file " + quote_text(value) +
                          " is not a plain file name inside the directory");
      }
      if (value.size() < 12 || value.compare(value.size() - 12, 12, ".safetensors") != 0) {
        throw FormatError("key " + quote_text(entry_) + ": file " + quote_text(value) +
                          " is not a .safetensors file");
      }
      file_of_name_.try_emplace(value, 0);
      keys_.push_back(std::move(entry_));
      file_names_.push_back(std::move(value));
      return true;
    }
    return scalar(value);
  }
  bool null() override { return scalar("null"); }
  bool boolean(bool v) override { return scalar(v ? "true" : "false"); }
  bool number_integer(number_integer_t v) override { return scalar(std::to_string(v)); }
  bool number_unsigned(number_unsigned_t v) override { return scalar(std::to_string(v)); }
  bool number_float(number_float_t, const string_t& text) override { return scalar(text); }
  bool binary(binary_t&) override { throw FormatError("binary JSON value"); }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& e) override {
    throw FormatError("not valid JSON at byte " + std::to_string(position) + ": " + e.what());
  }

 private:
  enum class Section { kNone, kWeightMap, kMetadata, kOther };

  const char* where() const {
    switch (section_) {
      case Section::kWeightMap:
        return "\"weight_map\"";
      case Section::kMetadata:
        return "\"metadata\"";
      default:
        return depth_ == 0 ? "the top level" : "a top-level member";
    }
  }

  bool scalar(const std::string& text) {
    if (depth_ == 0) throw FormatError("the index is not a JSON object");
    if (section_ == Section::kWeightMap) {
      throw FormatError("key " + quote_text(entry_) + ": the file name is not a string");
    }
    if (section_ == Section::kMetadata) {
      if (metadata_.size() >= kMaxHfIndexEntries) throw FormatError("metadata is too large");
      metadata_.emplace_back(entry_, text.substr(0, kMaxHfKeyBytes));
    }
    return true;
  }

  int depth_ = 0;
  Section section_ = Section::kNone;
  bool saw_weight_map_ = false;
  std::string member_;  ///< the top-level member being read
  std::string entry_;   ///< the key being read inside a member
  std::vector<std::string> keys_;
  std::vector<std::string> file_names_;  ///< file of keys_[i]
  std::unordered_set<std::string> seen_;
  std::map<std::string, int> file_of_name_;
  std::vector<std::pair<std::string, std::string>> metadata_;
};

}  // namespace

bool is_plain_file_name(std::string_view name) {
  return !name.empty() && name.size() <= 255 && name != "." && name != ".." &&
         name.find('/') == std::string_view::npos && name.find('\0') == std::string_view::npos &&
         is_valid_utf8(name);
}

HfIndex parse_hf_index(std::string_view json) {
  if (json.size() > kMaxHfIndexBytes) {
    throw FormatError("index of " + std::to_string(json.size()) + " bytes (at most " +
                      std::to_string(kMaxHfIndexBytes) + ")");
  }
  IndexHandler handler;
  Json::sax_parse(json.begin(), json.end(), &handler);
  return handler.take();
}

HfIndex read_hf_index(const std::string& path) {
  try {
    const int fd = open_regular_file(path);
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    struct stat st {};
    if (::fstat(fd, &st) != 0)
      throw FormatError(std::string("cannot stat: ") + std::strerror(errno));
    const auto size = static_cast<uint64_t>(st.st_size);
    if (size > kMaxHfIndexBytes) {
      throw FormatError("index of " + std::to_string(size) + " bytes (at most " +
                        std::to_string(kMaxHfIndexBytes) + ")");
    }
    std::string text(size, '\0');
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pread(fd, text.data() + done, size - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw FormatError("cannot read " + std::to_string(size) + " bytes");
      done += static_cast<size_t>(n);
    }
    return parse_hf_index(text);
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

}  // namespace shardload
