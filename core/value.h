// Plain values of a training state (a step, an epoch, learning rates, a scheduler's state, an
// optimizer's hyper-parameters): typed, with one bounded binary codec (docs/FORMAT.md,
// "Plain values"). Reading one runs no code: a pickled value (stored only when the caller allowed
// it) stays its bytes here, and only the Python layer unpickles it, again only when allowed.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shardload {

/// One plain value: Python's None, bool, int (64-bit), float, str, bytes, list, tuple and dict,
/// nested; or the bytes of a pickled object.
struct Value {
  enum class Kind : uint8_t {
    kNone = 0,
    kBool = 1,
    kInt = 2,
    kFloat = 3,
    kStr = 4,    ///< UTF-8 text in `text`
    kBytes = 5,  ///< `text` holds the bytes
    kList = 6,   ///< `items`
    kTuple = 7,  ///< `items`
    kDict =
        8,  ///< `items`: key, value, key, value, ... (keys: none/bool/int/float/str/bytes/tuple)
    kPickle = 9,  ///< `text` holds a pickle's bytes (never unpickled in C++)
  };
  Kind kind = Kind::kNone;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string text;
  std::vector<Value> items;

  static Value none() { return {}; }
  static Value of_bool(bool b);
  static Value of_int(int64_t i);
  static Value of_float(double f);
  static Value of_str(std::string s);
  static Value of_bytes(std::string b);
  static Value of_pickle(std::string b);
  static Value list(std::vector<Value> items);
  static Value tuple(std::vector<Value> items);
  /// `pairs`: key, value, key, value, ...
  static Value dict(std::vector<Value> pairs);

  /// Exact equality: same kinds all the way down, floats by their bits.
  bool operator==(const Value& other) const;
  /// Whether this value or one inside it is a pickle.
  bool holds_pickle() const;
  /// Python-like text for messages and `inspect` ("3", "'cosine'", "[0.1, 0.01]", "<pickle, 80
  /// bytes>"), cut after about `max_chars`.
  std::string repr(size_t max_chars = 200) const;
};

/// The values of a state, by key, in the caller's order.
using ValueList = std::vector<std::pair<std::string, Value>>;

/// Bounds of the codec: nesting depth, and the bytes of one encoded list of values.
inline constexpr int kMaxValueDepth = 64;
inline constexpr uint64_t kMaxValueBytes = uint64_t{1} << 30;
inline constexpr uint64_t kMaxValueKeys = uint64_t{1} << 22;

/// The binary form of a list of keyed values (docs/FORMAT.md).
std::string encode_values(const ValueList& values);
/// Decodes encode_values()'s form. Untrusted input: every length and count is checked against
/// the bytes that remain before it is used, nesting is bounded, bools are 0 or 1, text is UTF-8,
/// dict keys are of hashable kinds, keys are unique. Throws FormatError naming `what` and the
/// key.
ValueList decode_values(std::string_view bytes, const std::string& what);

}  // namespace shardload
