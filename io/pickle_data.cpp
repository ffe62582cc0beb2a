#include "io/pickle_data.h"

#include <any>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "core/shape.h"
#include "io/key_text.h"

namespace shardload {
namespace {

using Kind = PickleValue::Kind;

constexpr std::string_view kOrderedDict = "collections.OrderedDict";
constexpr std::string_view kTorchSize = "torch.Size";
constexpr std::string_view kCodecsEncode = "_codecs.encode";
constexpr std::string_view kNumpyDtype = "numpy.dtype";
constexpr std::string_view kNumpyDtypeType = "numpy.dtype";

/// A numpy dtype as numpy.dtype('f8', False, True) and its BUILD state describe it.
struct NumpyDtype {
  char kind = 0;     // 'f' float, 'i' signed, 'u' unsigned, 'b' bool
  int size = 0;      // bytes
  char order = '<';  // '<' little, '>' big, '|' not applicable, '=' native
};

bool is_numpy_scalar(std::string_view f) {
  return f == "numpy.core.multiarray.scalar" || f == "numpy._core.multiarray.scalar";
}

NumpyDtype parse_numpy_dtype(const std::string& code) {
  NumpyDtype d;
  std::string_view c(code);
  if (!c.empty() && (c[0] == '<' || c[0] == '>' || c[0] == '|' || c[0] == '=')) {
    d.order = c[0];
    c.remove_prefix(1);
  }
  if (c.size() == 2 && (c[0] == 'f' || c[0] == 'i' || c[0] == 'u' || c[0] == 'b') && c[1] >= '1' &&
      c[1] <= '8') {
    d.kind = c[0];
    d.size = c[1] - '0';
  }
  const bool ok = (d.kind == 'f' && (d.size == 2 || d.size == 4 || d.size == 8)) ||
                  ((d.kind == 'i' || d.kind == 'u') &&
                   (d.size == 1 || d.size == 2 || d.size == 4 || d.size == 8)) ||
                  (d.kind == 'b' && d.size == 1);
  if (!ok) throw FormatError("numpy dtype " + quote_text(code) + " is not supported");
  return d;
}

double half_to_double(uint16_t h) {
  const int sign = h >> 15;
  const int exponent = (h >> 10) & 0x1F;
  const int mantissa = h & 0x3FF;
  double v;
  if (exponent == 0) {
    v = mantissa * (1.0 / (1 << 24));
  } else if (exponent == 31) {
    v = mantissa ? std::numeric_limits<double>::quiet_NaN()
                 : std::numeric_limits<double>::infinity();
  } else {
    v = (1024 + mantissa) * std::ldexp(1.0, exponent - 25);
  }
  return sign ? -v : v;
}

/// numpy.core.multiarray.scalar(dtype, bytes): the plain Python value of the scalar.
PickleValuePtr numpy_scalar(const std::vector<PickleValuePtr>& args) {
  if (args.size() != 2 || args[0]->kind != Kind::kObject || args[0]->type_name != kNumpyDtypeType ||
      args[1]->kind != Kind::kBytes) {
    throw FormatError("numpy scalar needs (dtype, bytes)");
  }
  const NumpyDtype d = *std::any_cast<NumpyDtype>(&args[0]->object);
  if (d.order == '>') throw FormatError("big-endian numpy scalars are not supported");
  const std::string& raw = args[1]->text;
  if (raw.size() != static_cast<size_t>(d.size)) {
    throw FormatError("numpy scalar of " + std::to_string(d.size) + " bytes holds " +
                      std::to_string(raw.size()));
  }
  uint64_t bits = 0;
  for (int i = 0; i < d.size; ++i) bits |= uint64_t{static_cast<uint8_t>(raw[i])} << (8 * i);
  PickleValuePtr v;
  if (d.kind == 'b') {
    if (bits > 1) throw FormatError("numpy bool scalar holds byte " + std::to_string(bits));
    v = make_pickle_value(Kind::kBool);
    v->boolean = bits != 0;
  } else if (d.kind == 'f') {
    v = make_pickle_value(Kind::kFloat);
    if (d.size == 8) {
      std::memcpy(&v->floating, &bits, 8);
    } else if (d.size == 4) {
      float f;
      const auto b32 = static_cast<uint32_t>(bits);
      std::memcpy(&f, &b32, 4);
      v->floating = f;
    } else {
      v->floating = half_to_double(static_cast<uint16_t>(bits));
    }
  } else {
    v = make_pickle_value(Kind::kInt);
    if (d.kind == 'u' && d.size == 8 && bits > static_cast<uint64_t>(INT64_MAX)) {
      throw FormatError("numpy uint64 scalar " + std::to_string(bits) + " does not fit int64");
    }
    if (d.kind == 'i' && d.size < 8 && (bits >> (8 * d.size - 1)) & 1) {
      bits |= ~uint64_t{0} << (8 * d.size);  // sign extension
    }
    v->integer = static_cast<int64_t>(bits);
  }
  return v;
}

}  // namespace

bool is_data_global(const std::string& module, const std::string& name) {
  const std::string f = module + "." + name;
  return f == kOrderedDict || f == kTorchSize || f == kCodecsEncode || f == kNumpyDtype ||
         is_numpy_scalar(f);
}

PickleValuePtr call_data_global(const PickleValue& callable,
                                const std::vector<PickleValuePtr>& args) {
  const std::string& f = callable.text;
  if (f == kOrderedDict) {
    auto dict = make_pickle_value(Kind::kDict);
    if (args.empty()) return dict;
    if (args.size() == 1 && (args[0]->kind == Kind::kList || args[0]->kind == Kind::kTuple)) {
      for (const auto& pair : args[0]->items) {
        if (pair->kind != Kind::kTuple || pair->items.size() != 2) {
          throw FormatError("OrderedDict from a sequence of non-pairs");
        }
        dict->entries.emplace_back(pair->items[0], pair->items[1]);
      }
      return dict;
    }
    throw FormatError("unsupported arguments to OrderedDict");
  }
  if (f == kTorchSize) {
    if (args.size() != 1 || (args[0]->kind != Kind::kTuple && args[0]->kind != Kind::kList)) {
      throw FormatError("torch.Size needs one tuple");
    }
    auto tuple = make_pickle_value(Kind::kTuple);
    for (const auto& item : args[0]->items) {
      if (item->kind != Kind::kInt) throw FormatError("torch.Size of a " + item->describe());
      tuple->items.push_back(item);
    }
    return tuple;
  }
  if (f == kCodecsEncode) {
    if (args.size() != 2 || args[0]->kind != Kind::kString || args[1]->kind != Kind::kString) {
      throw FormatError("_codecs.encode needs (str, encoding)");
    }
    auto bytes = make_pickle_value(Kind::kBytes);
    const std::string& encoding = args[1]->text;
    if (encoding == "latin1" || encoding == "latin-1") {
      auto latin1 = utf8_to_latin1(args[0]->text);
      if (!latin1) throw FormatError("_codecs.encode: text is not Latin-1");
      bytes->text = std::move(*latin1);
    } else if (encoding == "utf-8" || encoding == "utf8") {
      bytes->text = args[0]->text;
    } else {
      throw FormatError("_codecs.encode with encoding " + quote_text(encoding));
    }
    return bytes;
  }
  if (f == kNumpyDtype) {
    // numpy.dtype(code, align=False, copy=True)
    if (args.empty() || args.size() > 3 || args[0]->kind != Kind::kString) {
      throw FormatError("numpy.dtype needs a type code");
    }
    auto v = make_pickle_value(Kind::kObject);
    v->object = parse_numpy_dtype(args[0]->text);
    v->type_name = std::string(kNumpyDtypeType);
    return v;
  }
  if (is_numpy_scalar(f)) return numpy_scalar(args);
  throw FormatError("cannot call " + f);
}

bool build_data_value(PickleValue& object, const PickleValuePtr& state) {
  if (object.kind == Kind::kDict && state->kind == Kind::kDict) return true;
  if (object.kind == Kind::kObject && object.type_name == kNumpyDtypeType) {
    // (version, byte order, subarray, names, fields, elsize, alignment, flags)
    if (state->kind != Kind::kTuple || state->items.size() < 2 ||
        state->items[1]->kind != Kind::kString || state->items[1]->text.size() != 1) {
      throw FormatError("unsupported numpy dtype state (a " + state->describe() + ")");
    }
    std::any_cast<NumpyDtype>(&object.object)->order = state->items[1]->text[0];
    return true;
  }
  return false;
}

bool is_checkpoint_global(const std::string& module, const std::string& name) {
  if (module == "torch._utils") {
    return name == "_rebuild_tensor_v2" || name == "_rebuild_tensor_v3" ||
           name == "_rebuild_parameter" || name == "_rebuild_parameter_with_state";
  }
  if (module == "torch.storage") return name == "UntypedStorage";
  // A typed storage class, or a dtype (the last argument of _rebuild_tensor_v3): names only,
  // never called.
  if (module == "torch" &&
      (dtype_from_storage_class(name).has_value() || dtype_from_name(name).has_value())) {
    return true;
  }
  return is_data_global(module, name);
}

std::optional<DType> dtype_of_global(const PickleValue& value) {
  if (value.kind != PickleValue::Kind::kGlobal) return std::nullopt;
  const std::string_view text(value.text);
  if (!text.starts_with("torch.")) return std::nullopt;
  return dtype_from_name(text.substr(6));
}

PickleHooks checkpoint_pickle_hooks(decltype(PickleHooks::persistent_load) persistent_load,
                                    decltype(PickleHooks::call) call) {
  PickleHooks h;
  h.allow_global = is_checkpoint_global;
  h.persistent_load = std::move(persistent_load);
  h.call = std::move(call);
  h.build = [](PickleValue& object, const PickleValuePtr& state) {
    if (build_data_value(object, state)) return;
    throw FormatError("cannot BUILD a " + object.describe() + " from a " + state->describe());
  };
  return h;
}

PickleHooks data_pickle_hooks() {
  PickleHooks h;
  h.allow_global = is_data_global;
  h.persistent_load = [](const PickleValuePtr&) -> PickleValuePtr {
    throw FormatError("a persistent id (a tensor's storage) where only plain data may be");
  };
  h.call = call_data_global;
  h.build = [](PickleValue& object, const PickleValuePtr& state) {
    if (build_data_value(object, state)) return;
    throw FormatError("cannot BUILD a " + object.describe() + " from a " + state->describe());
  };
  return h;
}

int64_t pickle_int(const PickleValuePtr& v, const char* what) {
  if (v->kind != Kind::kInt) {
    throw FormatError(std::string(what) + " is a " + v->describe() + ", not an int");
  }
  return v->integer;
}

std::vector<int64_t> pickle_dims(const PickleValuePtr& v, const char* what) {
  if (v->kind != Kind::kTuple && v->kind != Kind::kList) {
    throw FormatError(std::string(what) + " is a " + v->describe() + ", not a tuple");
  }
  if (v->items.size() > static_cast<size_t>(kMaxDims)) {
    throw FormatError(std::string(what) + " has " + std::to_string(v->items.size()) +
                      " dimensions (at most " + std::to_string(kMaxDims) + ")");
  }
  std::vector<int64_t> out;
  out.reserve(v->items.size());
  for (const auto& item : v->items) {
    const int64_t x = pickle_int(item, what);
    if (x < 0) throw FormatError(std::string(what) + " has a negative entry");
    out.push_back(x);
  }
  return out;
}

StorageId parse_storage_id(const PickleValuePtr& pid) {
  if (pid->kind != Kind::kTuple || pid->items.size() < 5 || pid->items[0]->kind != Kind::kString ||
      pid->items[0]->text != "storage") {
    throw FormatError("unsupported persistent id (a " + pid->describe() +
                      "), expected ('storage', class, key, location, numel)");
  }
  const auto& cls = pid->items[1];
  const auto& key = pid->items[2];
  if (cls->kind != Kind::kGlobal || key->kind != Kind::kString) {
    throw FormatError("malformed storage persistent id");
  }
  // A long (memoized) name would make every lookup of it cost its length.
  constexpr size_t kMaxStorageKeyBytes = 256;
  if (key->text.size() > kMaxStorageKeyBytes) {
    throw FormatError("storage key of " + std::to_string(key->text.size()) + " bytes");
  }
  const std::string_view cls_name(cls->text);
  const int64_t numel = pickle_int(pid->items[4], "storage numel");
  if (cls_name == "torch.storage.UntypedStorage") return StorageId{key->text, std::nullopt, numel};
  const auto dtype = cls_name.starts_with("torch.") ? dtype_from_storage_class(cls_name.substr(6))
                                                    : std::optional<DType>();
  if (!dtype) throw FormatError("unsupported storage class " + cls->text);
  return StorageId{key->text, *dtype, numel};
}

}  // namespace shardload
