#include "core/value.h"

#include <bit>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>

#include "core/error.h"
#include "core/wire.h"

namespace shardload {

Value Value::of_bool(bool b) {
  Value v;
  v.kind = Kind::kBool;
  v.boolean = b;
  return v;
}
Value Value::of_int(int64_t i) {
  Value v;
  v.kind = Kind::kInt;
  v.integer = i;
  return v;
}
Value Value::of_float(double f) {
  Value v;
  v.kind = Kind::kFloat;
  v.real = f;
  return v;
}
namespace {
Value with_text(Value::Kind kind, std::string s) {
  Value v;
  v.kind = kind;
  v.text = std::move(s);
  return v;
}
Value with_items(Value::Kind kind, std::vector<Value> items) {
  Value v;
  v.kind = kind;
  v.items = std::move(items);
  return v;
}
}  // namespace
Value Value::of_str(std::string s) { return with_text(Kind::kStr, std::move(s)); }
Value Value::of_bytes(std::string b) { return with_text(Kind::kBytes, std::move(b)); }
Value Value::of_pickle(std::string b) { return with_text(Kind::kPickle, std::move(b)); }
Value Value::list(std::vector<Value> items) { return with_items(Kind::kList, std::move(items)); }
Value Value::tuple(std::vector<Value> items) { return with_items(Kind::kTuple, std::move(items)); }
Value Value::dict(std::vector<Value> pairs) {
  if (pairs.size() % 2) throw UsageError("Value::dict needs key, value pairs");
  return with_items(Kind::kDict, std::move(pairs));
}

bool Value::operator==(const Value& o) const {
  if (kind != o.kind) return false;
  switch (kind) {
    case Kind::kNone:
      return true;
    case Kind::kBool:
      return boolean == o.boolean;
    case Kind::kInt:
      return integer == o.integer;
    case Kind::kFloat:
      return std::bit_cast<uint64_t>(real) == std::bit_cast<uint64_t>(o.real);
    case Kind::kStr:
    case Kind::kBytes:
    case Kind::kPickle:
      return text == o.text;
    case Kind::kList:
    case Kind::kTuple:
    case Kind::kDict:
      return items == o.items;
  }
  return false;
}

bool Value::holds_pickle() const {
  if (kind == Kind::kPickle) return true;
  for (const auto& v : items) {
    if (v.holds_pickle()) return true;
  }
  return false;
}

namespace {

void repr_into(const Value& v, std::string& out, size_t max_chars) {
  if (out.size() > max_chars) return;
  using K = Value::Kind;
  switch (v.kind) {
    case K::kNone:
      out += "None";
      return;
    case K::kBool:
      out += v.boolean ? "True" : "False";
      return;
    case K::kInt:
      out += std::to_string(v.integer);
      return;
    case K::kFloat: {
      // The shortest text that reads back as the same double, as Python's repr.
      char buf[32];
      const auto end = std::to_chars(buf, buf + sizeof buf, v.real).ptr;
      const std::string text(buf, end);
      out += text;
      if (text.find_first_of(".eninf") == std::string::npos) out += ".0";
      return;
    }
    case K::kStr:
      out += "'" + v.text.substr(0, max_chars) + "'";
      return;
    case K::kBytes:
      out += "<bytes, " + std::to_string(v.text.size()) + " bytes>";
      return;
    case K::kPickle:
      out += "<pickle, " + std::to_string(v.text.size()) + " bytes>";
      return;
    case K::kList:
    case K::kTuple:
    case K::kDict: {
      const bool dict = v.kind == K::kDict;
      out += dict ? "{" : v.kind == K::kList ? "[" : "(";
      for (size_t i = 0; i < v.items.size(); ++i) {
        if (out.size() > max_chars) {
          out += "...";
          break;
        }
        if (i) out += dict && i % 2 ? ": " : ", ";
        repr_into(v.items[i], out, max_chars);
      }
      if (v.kind == K::kTuple && v.items.size() == 1) out += ",";
      out += dict ? "}" : v.kind == K::kList ? "]" : ")";
      return;
    }
  }
}

// ---- Encoding: little-endian, a tag byte per value -------------------------------------------

constexpr char kMagic[4] = {'S', 'L', 'V', '1'};

void encode(const Value& v, WireWriter& out, int depth) {
  if (depth > kMaxValueDepth) {
    throw UsageError("a value nests deeper than " + std::to_string(kMaxValueDepth) + " levels");
  }
  using K = Value::Kind;
  out.u8(static_cast<uint8_t>(v.kind));
  switch (v.kind) {
    case K::kNone:
      return;
    case K::kBool:
      out.u8(v.boolean ? 1 : 0);
      return;
    case K::kInt:
      out.i64(v.integer);
      return;
    case K::kFloat:
      out.u64(std::bit_cast<uint64_t>(v.real));
      return;
    case K::kStr:
    case K::kBytes:
    case K::kPickle:
      out.str(v.text);
      return;
    case K::kList:
    case K::kTuple:
    case K::kDict:
      if (v.kind == K::kDict && v.items.size() % 2) throw UsageError("a dict value is not pairs");
      out.u64(v.kind == K::kDict ? v.items.size() / 2 : v.items.size());
      for (const auto& item : v.items) encode(item, out, depth + 1);
      return;
  }
  throw UsageError("a value of unknown kind " + std::to_string(static_cast<int>(v.kind)));
}

// ---- Decoding: every length against the bytes that remain -----------------------------------

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    uint32_t cp = n == 1 ? c : n == 2 ? c & 0x1f : n == 3 ? c & 0x0f : c & 0x07;
    for (size_t k = 1; k < n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 0x2) return false;
      cp = (cp << 6) | (d & 0x3f);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
        (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff) {
      return false;
    }
    i += n;
  }
  return true;
}

class Decoder {
 public:
  explicit Decoder(std::string_view bytes) : r_(bytes, "encoded values") {}

  uint64_t remaining() const { return r_.remaining(); }
  uint8_t u8(const char* what) { return r_.u8(what); }
  uint64_t u64(const char* what) { return r_.u64(what); }
  std::string text(uint64_t n, const char* what) { return r_.bytes(n, what); }
  /// A count of items, each at least `min_bytes` long, that must fit in what remains.
  uint64_t count(uint64_t min_bytes, const char* what) { return r_.count(min_bytes, what); }

  Value value(int depth) {
    if (depth > kMaxValueDepth) {
      throw FormatError("values nest deeper than " + std::to_string(kMaxValueDepth) + " levels");
    }
    using K = Value::Kind;
    const uint8_t tag = u8("a value's tag");
    Value v;
    switch (static_cast<K>(tag)) {
      case K::kNone:
        return v;
      case K::kBool: {
        const uint8_t b = u8("a bool");
        if (b > 1) throw FormatError("a bool holds " + std::to_string(b) + " (0 or 1)");
        return Value::of_bool(b == 1);
      }
      case K::kInt:
        return Value::of_int(static_cast<int64_t>(u64("an int")));
      case K::kFloat:
        return Value::of_float(std::bit_cast<double>(u64("a float")));
      case K::kStr: {
        std::string s = text(u64("a str's length"), "a str");
        if (!valid_utf8(s)) throw FormatError("a str is not valid UTF-8");
        return Value::of_str(std::move(s));
      }
      case K::kBytes:
        return Value::of_bytes(text(u64("a bytes' length"), "bytes"));
      case K::kPickle:
        return Value::of_pickle(text(u64("a pickle's length"), "a pickle"));
      case K::kList:
      case K::kTuple: {
        const uint64_t n = count(1, "a list's length");
        std::vector<Value> items;
        items.reserve(n);
        for (uint64_t i = 0; i < n; ++i) items.push_back(value(depth + 1));
        return tag == static_cast<uint8_t>(K::kList) ? Value::list(std::move(items))
                                                     : Value::tuple(std::move(items));
      }
      case K::kDict: {
        const uint64_t n = count(2, "a dict's length");
        std::vector<Value> items;
        items.reserve(2 * n);
        for (uint64_t i = 0; i < n; ++i) {
          items.push_back(value(depth + 1));
          check_hashable(items.back());
          items.push_back(value(depth + 1));
        }
        return Value::dict(std::move(items));
      }
    }
    throw FormatError("unknown value tag " + std::to_string(tag));
  }

 private:
  static void check_hashable(const Value& key) {
    using K = Value::Kind;
    if (key.kind == K::kList || key.kind == K::kDict || key.kind == K::kPickle) {
      throw FormatError("a dict key is a " +
                        std::string(key.kind == K::kList   ? "list"
                                    : key.kind == K::kDict ? "dict"
                                                           : "pickle") +
                        " (not hashable)");
    }
    for (const auto& item : key.items) check_hashable(item);
  }
  WireReader r_;
};

}  // namespace

std::string Value::repr(size_t max_chars) const {
  std::string out;
  repr_into(*this, out, max_chars);
  return out;
}

std::string encode_values(const ValueList& values) {
  if (values.size() > kMaxValueKeys) {
    throw UsageError(std::to_string(values.size()) + " plain values (at most " +
                     std::to_string(kMaxValueKeys) + ")");
  }
  WireWriter w;
  w.u64(values.size());
  for (const auto& [key, value] : values) {
    w.str(key);
    try {
      encode(value, w, 0);
    } catch (const Error& e) {
      throw UsageError("value '" + key + "': " + e.what());
    }
  }
  const std::string out = std::string(kMagic, sizeof kMagic) + w.take();
  if (out.size() > kMaxValueBytes) {
    throw UsageError("the plain values take " + std::to_string(out.size()) + " bytes (at most " +
                     std::to_string(kMaxValueBytes) + ")");
  }
  return out;
}

ValueList decode_values(std::string_view bytes, const std::string& what) {
  std::string key = "(header)";
  try {
    if (bytes.size() > kMaxValueBytes) {
      throw FormatError(std::to_string(bytes.size()) + " bytes of values (at most " +
                        std::to_string(kMaxValueBytes) + ")");
    }
    if (bytes.size() < sizeof kMagic || std::memcmp(bytes.data(), kMagic, sizeof kMagic) != 0) {
      throw FormatError("not an encoded list of values (no 'SLV1' mark)");
    }
    Decoder d(bytes.substr(sizeof kMagic));
    const uint64_t n = d.count(9 + 1, "the number of values");
    if (n > kMaxValueKeys) {
      throw FormatError(std::to_string(n) + " values (at most " + std::to_string(kMaxValueKeys) +
                        ")");
    }
    ValueList out;
    out.reserve(n);
    std::set<std::string_view> seen;
    for (uint64_t i = 0; i < n; ++i) {
      key = "#" + std::to_string(i);
      const uint64_t len = d.u64("a key's length");
      if (len == 0 || len > (uint64_t{64} << 10)) {
        throw FormatError("a key of " + std::to_string(len) + " bytes (1 to 65536)");
      }
      std::string k = d.text(len, "a key");
      if (!valid_utf8(k)) throw FormatError("a key is not valid UTF-8");
      key = "'" + k + "'";
      out.emplace_back(std::move(k), d.value(0));
      if (!seen.insert(out.back().first).second) throw FormatError("the key appears twice");
    }
    if (d.remaining() != 0) {
      key = "(end)";
      throw FormatError(std::to_string(d.remaining()) + " bytes after the last value");
    }
    return out;
  } catch (const FormatError& e) {
    throw FormatError(what + ": value " + key + ": " + e.what());
  }
}

}  // namespace shardload
