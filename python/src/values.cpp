// Python objects <-> shardload::Value (core/value.h): the plain values of a training state.
// None, bool, int (64-bit), float, str, bytes, list, tuple and dict (hashable plain keys) map to
// their typed Value; anything else is a pickle, only when the caller allowed it.
#include "python/src/values.h"

#include "core/error.h"

namespace py = pybind11;

namespace shardload::python {
namespace {

std::string type_name(py::handle o) { return py::str(py::type::of(o).attr("__name__")); }

Value convert(py::handle o, const std::string& key, const py::object& dumps, int depth) {
  if (depth > kMaxValueDepth) {
    throw UsageError("value '" + key + "' nests deeper than " + std::to_string(kMaxValueDepth) +
                     " levels");
  }
  if (o.is_none()) return Value::none();
  if (PyBool_Check(o.ptr())) return Value::of_bool(o.ptr() == Py_True);
  // Exact types only: a subclass (an IntEnum, a namedtuple, an OrderedDict's subclass) would
  // come back as its base, so it is not plain.
  if (PyLong_CheckExact(o.ptr())) {
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(o.ptr(), &overflow);
    if (overflow == 0) return Value::of_int(v);
    if (!dumps) {
      throw UsageError("value '" + key + "': the int " + std::string(py::str(o)).substr(0, 60) +
                       " does not fit in 64 bits (store it pickled with allow_pickle=True, or "
                       "as a str)");
    }
  } else if (PyFloat_CheckExact(o.ptr())) {
    return Value::of_float(PyFloat_AS_DOUBLE(o.ptr()));
  } else if (PyUnicode_CheckExact(o.ptr())) {
    Py_ssize_t n = 0;
    const char* s = PyUnicode_AsUTF8AndSize(o.ptr(), &n);
    if (s) return Value::of_str(std::string(s, static_cast<size_t>(n)));
    PyErr_Clear();  // lone surrogates: not UTF-8, pickled when allowed
  } else if (PyBytes_CheckExact(o.ptr())) {
    return Value::of_bytes(std::string(py::bytes(py::reinterpret_borrow<py::bytes>(o))));
  } else if (PyList_CheckExact(o.ptr()) || PyTuple_CheckExact(o.ptr())) {
    std::vector<Value> items;
    for (py::handle item : o) items.push_back(convert(item, key, dumps, depth + 1));
    return PyList_CheckExact(o.ptr()) ? Value::list(std::move(items))
                                      : Value::tuple(std::move(items));
  } else if (PyDict_CheckExact(o.ptr()) ||
             py::type::of(o).is(py::module_::import("collections").attr("OrderedDict"))) {
    std::vector<Value> pairs;  // an OrderedDict comes back as a dict (same order)
    for (auto [k, v] : py::reinterpret_borrow<py::dict>(o)) {
      pairs.push_back(convert(k, key, dumps, depth + 1));
      if (pairs.back().holds_pickle()) {
        throw UsageError("value '" + key + "': a dict key of type " + type_name(k) +
                         " is not a plain value (None, bool, int, float, str, bytes, tuple)");
      }
      pairs.push_back(convert(v, key, dumps, depth + 1));
    }
    return Value::dict(std::move(pairs));
  }
  if (!dumps) {
    throw UsageError("value '" + key + "' holds a " + type_name(o) +
                     ", which is not a plain value (None, bool, int, float, str, bytes, list, "
                     "tuple, dict); pass allow_pickle=True to store it pickled");
  }
  return Value::of_pickle(std::string(py::bytes(dumps(o))));
}

}  // namespace

Value to_value(py::handle object, const std::string& key, bool allow_pickle) {
  py::object dumps;
  if (allow_pickle) dumps = py::module_::import("pickle").attr("dumps");
  return convert(object, key, dumps, 0);
}

py::object from_value(const Value& v) {
  using K = Value::Kind;
  switch (v.kind) {
    case K::kNone:
      return py::none();
    case K::kBool:
      return py::bool_(v.boolean);
    case K::kInt:
      return py::int_(v.integer);
    case K::kFloat:
      return py::float_(v.real);
    case K::kStr:
      return py::str(v.text);
    case K::kBytes:
      return py::bytes(v.text);
    case K::kPickle:
      // load() refused pickles unless LoadOptions::allow_pickle: this one was allowed.
      return py::module_::import("pickle").attr("loads")(py::bytes(v.text));
    case K::kList: {
      py::list out;
      for (const auto& item : v.items) out.append(from_value(item));
      return out;
    }
    case K::kTuple: {
      py::tuple out(v.items.size());
      for (size_t i = 0; i < v.items.size(); ++i) out[i] = from_value(v.items[i]);
      return out;
    }
    case K::kDict: {
      py::dict out;
      for (size_t i = 0; i + 1 < v.items.size(); i += 2) {
        out[from_value(v.items[i])] = from_value(v.items[i + 1]);
      }
      return out;
    }
  }
  throw FormatError("a value of unknown kind");
}

}  // namespace shardload::python
