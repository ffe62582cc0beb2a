// The pieces of the `shardload._shardload` extension module, each bound in its own file.
#pragma once

#include <torch/csrc/utils/pybind.h>

#include <vector>

#include "core/shape.h"

namespace pybind11::detail {

/// shardload::Shape to and from Python as a list of ints, as std::vector<int64_t> is.
template <>
struct type_caster<shardload::Shape> {
  PYBIND11_TYPE_CASTER(shardload::Shape, const_name("list[int]"));
  bool load(handle src, bool convert) {
    make_caster<std::vector<int64_t>> values;
    if (!values.load(src, convert)) return false;
    value = shardload::Shape(cast_op<std::vector<int64_t>&>(values));
    return true;
  }
  static handle cast(const shardload::Shape& shape, return_value_policy policy, handle parent) {
    return make_caster<std::vector<int64_t>>::cast(std::vector<int64_t>(shape), policy, parent);
  }
};

}  // namespace pybind11::detail

namespace shardload::python {

/// Options, results, progress reports, split rules and Partition as Python classes.
void bind_types(pybind11::module_& m);

/// shardload.Error and its subclasses (all RuntimeErrors), and the translation of the C++
/// exceptions into them; a failed verdict raises VerdictError with PyTorch's exact message.
void bind_errors(pybind11::module_& m);

}  // namespace shardload::python
