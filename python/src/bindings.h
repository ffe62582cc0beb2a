// The pieces of the `shardload._shardload` extension module, each bound in its own file.
#pragma once

#include <torch/csrc/utils/pybind.h>

namespace shardload::python {

/// Options, results, progress reports, split rules and Partition as Python classes.
void bind_types(pybind11::module_& m);

/// shardload.Error and its subclasses (all RuntimeErrors), and the translation of the C++
/// exceptions into them; a failed verdict raises VerdictError with PyTorch's exact message.
void bind_errors(pybind11::module_& m);

}  // namespace shardload::python
