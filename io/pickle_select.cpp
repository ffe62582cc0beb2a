#include "io/pickle_select.h"

#include <charconv>
#include <cmath>
#include <optional>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "io/key_text.h"

namespace shardload {
namespace {

using Kind = PickleValue::Kind;

bool is_tensor(const PickleValue& v) {
  return v.kind == Kind::kObject && v.type_name == kPickleTensorType;
}

bool is_container(const PickleValue& v) {
  return v.kind == Kind::kDict || v.kind == Kind::kList || v.kind == Kind::kTuple;
}

bool is_number(const PickleValue& v) {
  return v.kind == Kind::kInt || v.kind == Kind::kFloat || v.kind == Kind::kBool;
}

/// Python's repr of a float, near enough: shortest round trip, "1.0" rather than "1".
std::string float_text(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, x);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

std::string scalar_text(const PickleValue& v) {
  switch (v.kind) {
    case Kind::kInt:
      return std::to_string(v.integer);
    case Kind::kFloat:
      return float_text(v.floating);
    case Kind::kBool:
      return v.boolean ? "True" : "False";
    default:
      return v.text;
  }
}

/// The path segment a dict key gives, without copying a str key: a view of the key's text, or
/// of `scratch` for an int or bool key. False for keys without a name (tuples, floats, ...).
bool key_segment(const PickleValue& key, std::string& scratch, std::string_view* segment) {
  switch (key.kind) {
    case Kind::kString:
      *segment = key.text;
      return true;
    case Kind::kInt:
      scratch = std::to_string(key.integer);
      break;
    case Kind::kBool:
      scratch = key.boolean ? "True" : "False";
      break;
    default:
      return false;
  }
  *segment = scratch;
  return true;
}

/// Number of children of a container.
size_t child_count(const PickleValue& v) {
  return v.kind == Kind::kDict ? v.entries.size() : v.items.size();
}

/// Child `i` of a container and its path segment (false: a key without a name).
bool child_at(const PickleValue& v, size_t i, std::string& scratch, std::string_view* segment,
              const PickleValuePtr** child) {
  if (v.kind == Kind::kDict) {
    *child = &v.entries[i].second;
    return key_segment(*v.entries[i].first, scratch, segment);
  }
  *child = &v.items[i];
  scratch = std::to_string(i);
  *segment = scratch;
  return true;
}

/// Text that metadata can hold: valid UTF-8 without NUL.
bool is_clean_text(std::string_view text) {
  return text.find('\0') == std::string_view::npos && is_valid_utf8(text);
}

std::string join(const std::string& path, const std::string& segment) {
  return path.empty() ? segment : path + "." + segment;
}

std::string path_name(const std::string& path) {
  return path.empty() ? "the top level" : quote_text(path);
}

/// A list or tuple of at most 1024 numbers as Python prints it; nullopt otherwise.
std::optional<std::string> number_list_text(const PickleValue& v) {
  if (v.kind != Kind::kList && v.kind != Kind::kTuple) return std::nullopt;
  if (v.items.size() > 1024) return std::nullopt;
  std::string out = v.kind == Kind::kList ? "[" : "(";
  for (size_t i = 0; i < v.items.size(); ++i) {
    if (!is_number(*v.items[i])) return std::nullopt;
    if (i > 0) out += ", ";
    out += scalar_text(*v.items[i]);
  }
  if (v.kind == Kind::kTuple && v.items.size() == 1) out += ",";
  out += v.kind == Kind::kList ? "]" : ")";
  return out;
}

/// The child of container `v` named `segment`, or null.
PickleValuePtr child_named(const PickleValue& v, const std::string& segment) {
  if (v.kind == Kind::kDict) {
    std::string scratch;
    std::string_view name;
    for (const auto& [key, value] : v.entries) {
      if (key_segment(*key, scratch, &name) && name == segment) return value;
    }
    return nullptr;
  }
  size_t index = 0;
  const auto r = std::from_chars(segment.data(), segment.data() + segment.size(), index);
  if (r.ec != std::errc() || r.ptr != segment.data() + segment.size() || index >= v.items.size()) {
    return nullptr;
  }
  return v.items[index];
}

std::string some_keys(const PickleValue& v) {
  std::string out;
  std::string scratch;
  std::string_view segment;
  const PickleValuePtr* child = nullptr;
  size_t n = 0;
  for (size_t i = 0; i < child_count(v); ++i) {
    if (!child_at(v, i, scratch, &segment, &child)) continue;
    if (n == 10) return out + ", ...";
    out += (n++ ? ", " : "") + quote_text(segment, 60);
  }
  return n ? out : "none";
}

/// The container `select` names.
const PickleValue* resolve(const PickleValuePtr& root, std::string_view select) {
  const std::string where = "--select " + quote_text(select) + ": ";
  if (select == ".") {
    if (!is_container(*root)) {
      throw UsageError(where + "the top level is a " + root->describe() + ", not a dict");
    }
    return root.get();
  }
  std::vector<std::string> segments;
  for (size_t start = 0;;) {
    const size_t dot = select.find('.', start);
    segments.emplace_back(select.substr(start, dot - start));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  const PickleValue* current = root.get();
  std::string walked;
  for (size_t i = 0; i < segments.size();) {
    if (!is_container(*current)) {
      throw UsageError(where + path_name(walked) + " is a " + current->describe() + ", not a dict");
    }
    bool found = false;
    for (size_t j = segments.size(); j > i && !found; --j) {
      std::string name = segments[i];
      for (size_t k = i + 1; k < j; ++k) name += "." + segments[k];
      if (PickleValuePtr child = child_named(*current, name)) {
        current = child.get();
        walked = join(walked, name);
        i = j;
        found = true;
      }
    }
    if (!found) {
      throw UsageError(where + "no key " + quote_text(segments[i]) + " in " + path_name(walked) +
                       " (its keys: " + some_keys(*current) + ")");
    }
  }
  if (!is_container(*current)) {
    throw UsageError(where + quote_text(walked) + " is a " + current->describe() + ", not a dict");
  }
  return current;
}

/// The bytes of key paths (and str leaves) one walk may copy: a memoized long key reused
/// across a wide tree would otherwise make results of quadratic size from a small file.
constexpr size_t kMaxPathBytes = size_t{256} << 20;

/// One walk over the whole value DAG, each container expanded once; `target` (may be null)
/// is the selected container, whose tensors are collected with paths relative to it.
PickleSelection walk(const PickleValuePtr& root, const PickleValue* target) {
  struct Frame {
    PickleValuePtr value;
    std::string path;    // from the top level
    std::string parent;  // path of the container holding it
    bool inside;         // within the selection
    std::string relative;
  };
  PickleSelection out;
  std::unordered_map<std::string, size_t> group_index;
  std::unordered_set<const PickleValue*> expanded;
  std::vector<Frame> stack;
  size_t path_bytes = 0;  // every path built: in frames and in the results
  stack.push_back({root, "", "", false, ""});
  while (!stack.empty()) {
    Frame f = std::move(stack.back());
    stack.pop_back();
    const PickleValue& v = *f.value;
    if (&v == target) {
      f.inside = true;
      f.relative.clear();
    }
    if (is_tensor(v)) {
      if (f.inside) {
        out.tensors.emplace_back(f.relative, f.value);
      } else {
        auto [it, fresh] = group_index.emplace(f.parent, out.other_tensors.size());
        if (fresh) out.other_tensors.emplace_back(f.parent, 0);
        ++out.other_tensors[it->second].second;
      }
      continue;
    }
    if (v.kind == Kind::kString || is_number(v)) {
      path_bytes += v.text.size();  // a memoized long str met many times is copied each time
      if (path_bytes > kMaxPathBytes) {
        throw FormatError("the keys and strings of this file take more than " +
                          std::to_string(kMaxPathBytes) + " bytes");
      }
      std::string text = scalar_text(v);
      if (is_clean_text(f.path) && is_clean_text(text)) {
        out.scalars.emplace_back(f.path, std::move(text));
      } else {
        out.skipped.emplace_back(f.path, v.describe() + " that is not valid UTF-8 or holds NUL");
      }
      continue;
    }
    if (!is_container(v)) {
      out.skipped.emplace_back(f.path, v.describe());
      continue;
    }
    if (!expanded.insert(&v).second) {
      out.skipped.emplace_back(f.path, v.describe() + " met before (a shared reference)");
      continue;
    }
    if (auto text = number_list_text(v); text && &v != target) {
      out.scalars.emplace_back(f.path, *text);
      continue;
    }
    std::string scratch;
    std::string_view name;
    const PickleValuePtr* child = nullptr;
    for (size_t i = child_count(v); i-- > 0;) {
      const bool named = child_at(v, i, scratch, &name, &child);
      // Checked before anything is copied: a path lives in its frame (path, parent,
      // relative) and in at most one result.
      path_bytes += 4 * (f.path.size() + name.size() + 1);
      if (path_bytes > kMaxPathBytes) {
        throw FormatError("the key paths of this file take more than " +
                          std::to_string(kMaxPathBytes) + " bytes (keys " +
                          std::to_string(f.path.size() + name.size()) + " bytes long at " +
                          quote_text(f.path, 60) + ")");
      }
      if (!named) {
        out.skipped.emplace_back(join(f.path, "<key of type " + v.describe() + ">"),
                                 (*child)->describe());
        continue;
      }
      const std::string segment(name);
      stack.push_back({*child, join(f.path, segment), f.path, f.inside,
                       f.inside ? join(f.relative, segment) : std::string()});
    }
  }
  return out;
}

/// "; tensors are in 'model' (4), ...; pick one with --select KEY" for a non-flat file.
std::string nested_hint(const PickleValuePtr& root) {
  const PickleSelection all = walk(root, nullptr);
  if (all.other_tensors.empty()) return "; the file holds no tensors";
  std::string out = "; this is not a flat state dict. Sub-dictionaries holding tensors: ";
  for (size_t i = 0; i < all.other_tensors.size(); ++i) {
    if (i == 8) {
      out += ", and " + std::to_string(all.other_tensors.size() - 8) + " more";
      break;
    }
    const auto& [path, n] = all.other_tensors[i];
    out += (i ? ", " : "") + (path.empty() ? std::string(".") : quote_text(path)) + " (" +
           std::to_string(n) + " tensor" + (n == 1 ? "" : "s") + ")";
  }
  const std::string& first = all.other_tensors.front().first;
  return out + "; pick one with --select KEY (for example --select " +
         (first.empty() ? std::string(".") : first) + ")";
}

}  // namespace

PickleSelection select_tensors(const PickleValuePtr& root, std::string_view select) {
  const PickleValue* target = resolve(root, select);
  PickleSelection out = walk(root, target);
  std::unordered_set<std::string_view> seen;
  for (const auto& [key, tensor] : out.tensors) {
    check_tensor_key(key);
    if (!seen.insert(key).second) {
      throw FormatError("key " + quote_text(key) + ": occurs twice in the selection " +
                        quote_text(select) + " once nested keys are joined with '.'");
    }
  }
  return out;
}

std::vector<std::pair<std::string, PickleValuePtr>> flat_state_dict(const PickleValuePtr& root) {
  if (root->kind != Kind::kDict) {
    throw FormatError("expected a state dict (dict of str -> tensor), found a " + root->describe() +
                      nested_hint(root));
  }
  std::vector<std::pair<std::string, PickleValuePtr>> out;
  out.reserve(root->entries.size());
  std::unordered_set<std::string_view> seen;
  size_t key_bytes = 0;
  for (const auto& [key, value] : root->entries) {
    key_bytes += key->text.size();  // the same memoized long key may come back many times
    if (key_bytes > kMaxPathBytes) {
      throw FormatError("the keys of this state dict take more than " +
                        std::to_string(kMaxPathBytes) + " bytes");
    }
    if (key->kind != Kind::kString) {
      throw FormatError("state dict has a key of type " + key->describe() + ", expected str" +
                        nested_hint(root));
    }
    check_tensor_key(key->text);
    if (!is_tensor(*value)) {
      throw FormatError("key " + quote_text(key->text) + ": expected a tensor, found a " +
                        value->describe() + nested_hint(root));
    }
    if (!seen.insert(key->text).second) {
      throw FormatError("key " + quote_text(key->text) + ": duplicate key");
    }
    out.emplace_back(key->text, value);
  }
  return out;
}

}  // namespace shardload
