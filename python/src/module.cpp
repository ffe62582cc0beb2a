// `shardload._shardload`: the collective entry points behind shardload.save() and
// shardload.load() (python/shardload/__init__.py turns modules, dicts and keyword arguments into
// these calls). Each call builds this rank's Partition with the GIL held, then releases the GIL
// for the collective: first a status reduction over what every rank prepared (so that a bad
// argument on one rank is the same error on every rank, never a hang), then loader/'s save() or
// load(). The GIL is taken again only inside the progress and stall callbacks. The agreement runs
// under the caller's timeout like everything after it: a rank that never calls is named.
#include <torch/csrc/autograd/python_variable.h>

#include <optional>

#include "loader/collective.h"
#include "loader/shardload.h"
#include "python/src/bindings.h"
#include "python/src/mpi_session.h"
#include "python/src/values.h"
#include "shardload/config.h"
#include "tools/progress_display.h"
#include "transport/communicator.h"

namespace py = pybind11;

namespace shardload::python {
namespace {

/// What this rank hands to the collective: its partition, or what went wrong building it.
struct Prepared {
  std::optional<Partition> owned;
  Partition* partition = nullptr;
  ErrorKind kind = ErrorKind::kNone;
  std::string error;
};

/// `source` is a Partition (used as it is) or a list of (key, tensor) pairs (made into one with
/// `rules`). `local_error` is a failure the Python layer met before the call.
Prepared prepare(py::handle source, const std::vector<SplitRule>& rules,
                 const std::string& local_error) {
  Prepared p;
  if (!local_error.empty()) {
    p.kind = ErrorKind::kUsage;
    p.error = local_error;
    return p;
  }
  try {
    if (py::isinstance<Partition>(source)) {
      if (!rules.empty()) throw UsageError("split= cannot be combined with a Partition");
      p.partition = &source.cast<Partition&>();
      return p;
    }
    TensorList tensors;
    for (py::handle item : source) {
      auto pair = item.cast<py::tuple>();
      if (pair.size() != 2) throw UsageError("expected (key, tensor) pairs");
      std::string key = pair[0].cast<std::string>();
      if (!THPVariable_Check(pair[1].ptr())) {
        throw UsageError("key '" + key + "': expected a torch.Tensor, got " +
                         std::string(py::str(py::type::of(pair[1]).attr("__name__"))));
      }
      tensors.push_back({std::move(key), pair[1].cast<at::Tensor>()});
    }
    p.owned = Partition::from_tensors(tensors, rules);
    p.partition = &*p.owned;
  } catch (const std::exception& e) {
    p.kind = dynamic_cast<const Error*>(&e) ? current_error_kind() : ErrorKind::kUsage;
    p.error = e.what();
  }
  return p;
}

/// The progress= argument as a C++ callback: None, True (rank 0 shows tools' ProgressDisplay on
/// stderr) or a Python callable (called on every rank with the GIL held; if it raises, the
/// exception is reported as unraisable and the callable is not called again: a rank must not
/// leave a collective alone).
class ProgressHook {
 public:
  ProgressHook(py::handle progress, const std::string& operation) : operation_(operation) {
    if (progress.is_none() || (PyBool_Check(progress.ptr()) && !progress.cast<bool>())) return;
    if (PyBool_Check(progress.ptr())) {
      show_ = true;
      return;
    }
    if (!PyCallable_Check(progress.ptr())) {
      throw UsageError("progress= must be None, True or a callable, not " +
                       std::string(py::str(py::type::of(progress).attr("__name__"))));
    }
    python_ = std::make_shared<PythonCallback>();
    python_->fn = py::reinterpret_borrow<py::object>(progress);
  }
  ~ProgressHook() {
    if (python_) {
      py::gil_scoped_acquire gil;
      python_.reset();
    }
  }

  /// The callback for this rank; call without the GIL.
  ProgressCallback callback(int rank) {
    if (show_ && rank == 0) {
      display_.emplace(tools::ProgressDisplay::for_stderr(operation_));
      return display_->callback();
    }
    if (!python_) return {};
    return [state = python_](const Progress& p) {
      py::gil_scoped_acquire gil;
      if (state->failed) return;
      try {
        state->fn(p);
      } catch (py::error_already_set& e) {
        state->failed = true;
        e.discard_as_unraisable("shardload progress callback");
      }
    };
  }
  /// Ends the display with the summary (rank 0 with progress=True).
  void finish(int64_t bytes) {
    if (display_) display_->finish(bytes);
  }

 private:
  struct PythonCallback {
    py::object fn;
    bool failed = false;
  };
  std::string operation_;
  bool show_ = false;
  std::shared_ptr<PythonCallback> python_;
  std::optional<tools::ProgressDisplay> display_;
};

/// The on_stall= argument: a Python callable given each StallReport (with the GIL held; if it
/// raises, the exception is reported as unraisable: a rank must not leave a collective alone).
StallCallback stall_callback(py::handle on_stall) {
  if (on_stall.is_none()) return {};
  if (!PyCallable_Check(on_stall.ptr())) {
    throw UsageError("on_stall= must be None or a callable, not " +
                     std::string(py::str(py::type::of(on_stall).attr("__name__"))));
  }
  auto fn = std::shared_ptr<py::object>(
      new py::object(py::reinterpret_borrow<py::object>(on_stall)), [](py::object* o) {
        py::gil_scoped_acquire gil;
        delete o;
      });
  return [fn](const StallReport& report) {
    py::gil_scoped_acquire gil;
    try {
      (*fn)(report);
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("shardload on_stall callback");
    }
  };
}

int64_t bytes_of(const LoadResult& r) { return r.bytes_read_total; }
int64_t bytes_of(const SaveResult& r) { return r.bytes_written_total; }
int64_t bytes_of(const SaveHandle&) { return 0; }

/// The collective part of save and load: agree that every rank prepared, then run `call`.
/// `timeout`: the caller's, for the agreement as for the rest; `on_stall`, `stall_seconds`: the
/// stall reports of every collective of the call (StallReportScope).
template <class Result, class Call>
Result run_collective(const std::string& operation, const std::string& path, py::handle source,
                      const std::vector<SplitRule>& rules, py::handle progress, int64_t comm,
                      const std::string& local_error, double timeout, py::handle on_stall,
                      double stall_seconds, Call call) {
  ensure_mpi(timeout);
  MPI_Comm mpi_comm = communicator_of(comm);
  Prepared prepared = prepare(source, rules, local_error);
  std::optional<ProgressHook> hook;
  StallCallback on_stall_cb;
  try {
    hook.emplace(progress, operation);
    on_stall_cb = stall_callback(on_stall);
  } catch (const Error& e) {
    if (prepared.kind == ErrorKind::kNone) {
      prepared.kind = current_error_kind();
      prepared.error = e.what();
    }
  }
  if (!hook) hook.emplace(py::none(), operation);
  Result result;
  try {
    py::gil_scoped_release release;
    StallReportScope stall_scope(stall_seconds, on_stall_cb);
    const std::string name = "shardload." + operation + "(" + path + ")";
    Communicator c(mpi_comm, timeout, name);
    PhaseRunner(c, name).reduce("prepare", prepared.kind, prepared.error);
    result = call(*prepared.partition, mpi_comm, hook->callback(c.rank()));
  } catch (const TimeoutError&) {
    note_timeout();
    throw;
  }
  hook->finish(bytes_of(result));
  return result;
}

LoadResult py_load(py::handle source, const std::string& path, const std::vector<SplitRule>& rules,
                   LoadOptions options, py::handle progress, int64_t comm,
                   const std::string& local_error, py::handle on_stall, double stall_seconds) {
  return run_collective<LoadResult>(
      "load", path, source, rules, progress, comm, local_error, options.timeout_seconds, on_stall,
      stall_seconds, [&](Partition& partition, MPI_Comm mpi_comm, ProgressCallback callback) {
        options.progress = std::move(callback);
        return load(partition, path, mpi_comm, options);
      });
}

/// `values`: (key, object) pairs of plain values, made typed Values here (a failure is this
/// rank's error in the collective's first agreement, like every other bad argument).
/// `asynchronous`: save_async, returning a SaveHandle.
py::object py_save(py::handle source, const std::string& path, const std::vector<SplitRule>& rules,
                   SaveOptions options, py::handle progress, int64_t comm, std::string local_error,
                   py::handle on_stall, double stall_seconds, py::handle values, bool allow_pickle,
                   bool asynchronous) {
  if (local_error.empty() && !values.is_none()) {
    try {
      for (py::handle item : values) {
        auto pair = item.cast<py::tuple>();
        if (pair.size() != 2) throw UsageError("values: expected (key, object) pairs");
        std::string key = pair[0].cast<std::string>();
        options.values.emplace_back(key, to_value(pair[1], key, allow_pickle));
      }
    } catch (const Error& e) {
      local_error = e.what();
    } catch (const py::error_already_set& e) {  // pickle.dumps failed
      local_error = std::string("UsageError: a value could not be pickled: ") + e.what();
    } catch (const std::exception& e) {
      local_error = e.what();
    }
  }
  if (asynchronous) {
    // The background thread never calls into Python: no progress callback there.
    if (local_error.empty() && !progress.is_none()) {
      local_error = "progress= cannot be used with an asynchronous save (poll handle.done())";
    }
    return py::cast(run_collective<SaveHandle>(
        "save_async", path, source, rules, py::none(), comm, local_error, options.timeout_seconds,
        on_stall, stall_seconds, [&](Partition& partition, MPI_Comm mpi_comm, ProgressCallback) {
          return save_async(partition, path, mpi_comm, options);
        }));
  }
  return py::cast(run_collective<SaveResult>(
      "save", path, source, rules, progress, comm, local_error, options.timeout_seconds, on_stall,
      stall_seconds, [&](Partition& partition, MPI_Comm mpi_comm, ProgressCallback callback) {
        options.progress = std::move(callback);
        return save(partition, path, mpi_comm, options);
      }));
}

/// Waits with the GIL released (the background save never takes it).
SaveResult handle_wait(const SaveHandle& h) {
  py::gil_scoped_release release;
  return h.wait();
}

}  // namespace
}  // namespace shardload::python

PYBIND11_MODULE(_shardload, m) {
  using namespace shardload::python;
  m.doc() = "shardload's C++ core; use the functions of the `shardload` package.";
  m.attr("__version__") = SHARDLOAD_VERSION_STRING;
  m.attr("WITH_NCCL") = bool{SHARDLOAD_WITH_NCCL};
  m.attr("WORLD") = kWorld;
  bind_types(m);
  bind_errors(m);
  m.def("ensure_mpi", &ensure_mpi, py::arg("timeout") = 0.0,
        "Starts MPI unless it runs (mpi4py or another library started it); True when it did. "
        "With a timeout (seconds), a start-up that other ranks hold up longer ends the process "
        "with status 3, naming this rank and host on stderr.");
  m.def("finalize_mpi", &finalize_mpi_if_ours,
        "At exit: MPI_Finalize, only when ensure_mpi() started MPI; after a shardload timeout in "
        "this process, MPI_Abort instead (registered with atexit).");
  py::class_<shardload::StallReport>(
      m, "StallReport",
      "What on_stall= receives when a collective has waited past the stall threshold: which "
      "ranks (and hosts) have not arrived, in which phase.")
      .def_readonly("rank", &shardload::StallReport::rank)
      .def_readonly("host", &shardload::StallReport::host)
      .def_readonly("operation", &shardload::StallReport::operation)
      .def_readonly("phase", &shardload::StallReport::phase)
      .def_readonly("waiting_for", &shardload::StallReport::waiting_for)
      .def_readonly("hosts", &shardload::StallReport::hosts)
      .def_readonly("waited_seconds", &shardload::StallReport::waited_seconds)
      .def_readonly("timeout_seconds", &shardload::StallReport::timeout_seconds)
      .def_readonly("message", &shardload::StallReport::message)
      .def("__repr__", [](const shardload::StallReport& r) { return r.message; });
  m.def("load", &py_load, py::arg("source"), py::arg("path"), py::arg("rules"), py::arg("options"),
        py::arg("progress"), py::arg("comm"), py::arg("local_error"), py::arg("on_stall"),
        py::arg("stall_seconds"),
        "Collective load into a Partition or a list of (key, tensor) pairs, in place.");
  m.def("save", &py_save, py::arg("source"), py::arg("path"), py::arg("rules"), py::arg("options"),
        py::arg("progress"), py::arg("comm"), py::arg("local_error"), py::arg("on_stall"),
        py::arg("stall_seconds"), py::arg("values") = py::none(), py::arg("allow_pickle") = false,
        py::arg("asynchronous") = false,
        "Collective save of a Partition or a list of (key, tensor) pairs, with the plain "
        "values (key, object) of the state; with asynchronous=True a SaveHandle.");
  py::class_<shardload::SaveHandle>(
      m, "SaveHandle",
      "An asynchronous save (shardload.save_async): the state is in host memory; writing and the "
      "commit run in the background.")
      .def("done", &shardload::SaveHandle::done,
           "Whether the save has finished (committed or failed); never blocks.")
      .def("wait", &handle_wait,
           "Waits for the save; returns its SaveResult or raises its error, the same on every "
           "rank.")
      .def_property_readonly("blocked_seconds", &shardload::SaveHandle::blocked_seconds,
                             "seconds save_async blocked the caller on this rank")
      .def("__repr__", [](const shardload::SaveHandle& h) {
        return std::string("SaveHandle(") + (h.done() ? "done" : "running") + ")";
      });
  m.def(
      "wait_for_saves",
      [] {
        py::gil_scoped_release release;
        shardload::wait_for_saves();
      },
      "Waits for every asynchronous save of this process (their errors are their handles').");
  m.def(
      "release_snapshot_memory",
      [] {
        py::gil_scoped_release release;
        return shardload::release_snapshot_memory();
      },
      "Frees the host memory kept for the snapshots of later asynchronous saves (after waiting "
      "for those in flight); returns the bytes freed.");
  m.def("snapshot_memory_bytes", &shardload::snapshot_memory_bytes,
        "Bytes of host memory held for asynchronous saves' snapshots.");
  m.def("match_rules", &shardload::match_rules, py::arg("rules"), py::arg("keys"),
        "For each key, the index of the first split rule whose pattern it matches, or -1.");
}
