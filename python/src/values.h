// Python objects <-> shardload::Value: the plain values of a training state (values.cpp).
#pragma once

#include <torch/csrc/utils/pybind.h>

#include <string>

#include "core/value.h"

namespace shardload::python {

/// `object` as a typed Value; with `allow_pickle`, what is not plain is pickled, else a
/// UsageError naming `key` and the type. Needs the GIL.
Value to_value(pybind11::handle object, const std::string& key, bool allow_pickle);
/// The Python object of a Value (a pickle is unpickled: load() admits one only when allowed).
/// Needs the GIL.
pybind11::object from_value(const Value& value);

}  // namespace shardload::python
