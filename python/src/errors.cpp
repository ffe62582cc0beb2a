// shardload's exceptions in Python: one hierarchy under shardload.Error (a RuntimeError), each
// class with the command line's exit code. A failed verdict raises VerdictError whose message is
// PyTorch's load_state_dict text, exactly; shardload's additions (hints, uncovered regions) become
// exception notes, and the whole LoadResult rides along as `.result`.
#include "core/error.h"
#include "loader/load.h"
#include "python/src/bindings.h"

namespace py = pybind11;

namespace shardload::python {
namespace {

// Created once with the module and kept for the life of the process.
PyObject* error_type = nullptr;
PyObject* format_error_type = nullptr;
PyObject* verdict_error_type = nullptr;
PyObject* usage_error_type = nullptr;
PyObject* comm_error_type = nullptr;

PyObject* new_exception(py::module_& m, const char* name, PyObject* base, int exit_code,
                        const char* doc) {
  std::string qualified = std::string("shardload.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, base, nullptr);
  if (!type) throw py::error_already_set();
  py::setattr(type, "exit_code", py::int_(exit_code));
  m.add_object(name, py::handle(type));
  return type;
}

/// Lines that loader/verdict.cpp adds to PyTorch's message: they become notes.
bool is_shardload_addition(const std::string& line) {
  return line.rfind("Hint: ", 0) == 0 || line.rfind("Region(s) of the model not covered", 0) == 0;
}

void raise_verdict(const LoadVerdictError& e) {
  const std::string what = e.what();
  const std::string sep = "\n\t";
  std::string torch_text;
  std::vector<std::string> notes;
  size_t start = 0;
  for (bool first = true;; first = false) {
    size_t end = what.find(sep, start);
    std::string line = what.substr(start, end == std::string::npos ? end : end - start);
    if (!first && is_shardload_addition(line)) {
      notes.push_back(line);
    } else {
      torch_text += (first ? "" : sep) + line;
    }
    if (end == std::string::npos) break;
    start = end + sep.size();
  }
  py::object exc = py::reinterpret_borrow<py::object>(verdict_error_type)(torch_text);
  exc.attr("result") = py::cast(e.result());
  exc.attr("missing_keys") = py::cast(e.result().missing_keys);
  exc.attr("unexpected_keys") = py::cast(e.result().unexpected_keys);
  if (py::hasattr(exc, "add_note")) {
    for (const auto& n : notes) exc.attr("add_note")(n);
  }
  PyErr_SetObject(verdict_error_type, exc.ptr());
}

}  // namespace

void bind_errors(py::module_& m) {
  error_type = new_exception(m, "Error", PyExc_RuntimeError, 3,
                             "Base of every shardload error (a RuntimeError); `exit_code` is the "
                             "command line's exit code for it.");
  format_error_type = new_exception(m, "FormatError", error_type, 3,
                                    "Unreadable, corrupt or invalid checkpoint or input file.");
  verdict_error_type =
      new_exception(m, "VerdictError", error_type, 1,
                    "A failed load verdict (strict key mismatch, size mismatch). str() is "
                    "PyTorch's load_state_dict message; `.result` is the LoadResult, "
                    "`.missing_keys`/`.unexpected_keys` its lists; hints are notes.");
  usage_error_type = new_exception(m, "UsageError", error_type, 2,
                                   "Invalid arguments or declarations (bad split, bad option).");
  comm_error_type = new_exception(m, "CommError", error_type, 3,
                                  "A failure of MPI, NCCL or CUDA, or a rank that never arrived.");

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const LoadVerdictError& e) {
      raise_verdict(e);
    } catch (const VerdictError& e) {
      PyErr_SetString(verdict_error_type, e.what());
    } catch (const FormatError& e) {
      PyErr_SetString(format_error_type, e.what());
    } catch (const UsageError& e) {
      PyErr_SetString(usage_error_type, e.what());
    } catch (const CommError& e) {
      PyErr_SetString(comm_error_type, e.what());
    } catch (const Error& e) {
      PyErr_SetString(error_type, e.what());
    }
  });
}

}  // namespace shardload::python
