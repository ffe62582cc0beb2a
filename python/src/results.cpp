// Python classes for the plain structs of loader/: one line per field, so that a field added in
// C++ is one line here too.
#include <sstream>

#include "loader/shardload.h"
#include "python/src/bindings.h"
#include "python/src/values.h"

namespace py = pybind11;

namespace shardload::python {
namespace {

template <class T>
std::string joined(const std::vector<T>& items) {
  std::ostringstream s;
  s << "[";
  for (size_t i = 0; i < items.size(); ++i) s << (i ? ", " : "") << "'" << items[i] << "'";
  s << "]";
  return s.str();
}

std::string repr(const LoadResult& r) {
  std::ostringstream s;
  s << "LoadResult(ok=" << (r.ok ? "True" : "False") << ", missing_keys=" << joined(r.missing_keys)
    << ", unexpected_keys=" << joined(r.unexpected_keys)
    << ", size_mismatches=" << r.size_mismatches.size()
    << ", dtype_conversions=" << r.dtype_conversions.size()
    << ", bytes_read_total=" << r.bytes_read_total << ", wall_seconds=" << r.wall_seconds
    << ", transport='" << r.transport
    << "', checksums_verified=" << (r.checksums_verified ? "True" : "False") << ")";
  return s.str();
}

}  // namespace

void bind_types(py::module_& m) {
  py::class_<Progress>(m, "Progress",
                       "A snapshot of a running save or load on this rank, given to progress=.")
      .def_readonly("operation", &Progress::operation, "'load', 'save' or 'convert'")
      .def_readonly("phase", &Progress::phase, "the phase in progress ('transfer', 'write', ...)")
      .def_readonly("bytes_done", &Progress::bytes_done)
      .def_readonly("bytes_total", &Progress::bytes_total, "0 while unknown")
      .def_readonly("seconds", &Progress::seconds, "since the operation started")
      .def_readonly("finished", &Progress::finished, "the last report of the operation")
      .def("__repr__", [](const Progress& p) {
        std::ostringstream s;
        s << "Progress(operation='" << p.operation << "', phase='" << p.phase
          << "', bytes_done=" << p.bytes_done << ", bytes_total=" << p.bytes_total
          << ", seconds=" << p.seconds << ", finished=" << (p.finished ? "True" : "False") << ")";
        return s.str();
      });

  py::class_<SplitRule>(m, "SplitRule",
                        "Tensors whose key matches `pattern` (re.search) are this rank's slab of a "
                        "tensor split along `dim` across `group` (all ranks when empty).")
      .def(py::init([](std::string pattern, int64_t dim, std::vector<int> group) {
             return SplitRule{std::move(pattern), dim, std::move(group)};
           }),
           py::arg("pattern"), py::arg("dim"), py::arg("group") = std::vector<int>{})
      .def_readwrite("pattern", &SplitRule::pattern)
      .def_readwrite("dim", &SplitRule::dim)
      .def_readwrite("group", &SplitRule::group);

  py::class_<LoadOptions>(m, "LoadOptions", "Options of shardload.load (see loader/load.h).")
      .def(py::init<>())
      .def_readwrite("strict", &LoadOptions::strict)
      .def_readwrite("skip_size_mismatch", &LoadOptions::skip_size_mismatch)
      .def_readwrite("key_filter", &LoadOptions::key_filter)
      .def_readwrite("checkpoint_prefix", &LoadOptions::checkpoint_prefix)
      .def_readwrite("model_prefix", &LoadOptions::model_prefix)
      .def_readwrite("name", &LoadOptions::name)
      .def_readwrite("message_bytes", &LoadOptions::message_bytes)
      .def_readwrite("staging_bytes", &LoadOptions::staging_bytes)
      .def_readwrite("verify_checksums", &LoadOptions::verify_checksums)
      .def_readwrite("direct_io", &LoadOptions::direct_io)
      .def_readwrite("read_in_place", &LoadOptions::read_in_place)
      .def_readwrite("reader_threads", &LoadOptions::reader_threads)
      .def_readwrite("timeout_seconds", &LoadOptions::timeout_seconds)
      .def_readwrite("select", &LoadOptions::select)
      .def_readwrite("value_keys", &LoadOptions::value_keys)
      .def_readwrite("allow_pickle", &LoadOptions::allow_pickle)
      .def_readwrite("deferred_prefixes", &LoadOptions::deferred_prefixes)
      .def_readwrite("read_prefixes", &LoadOptions::read_prefixes);

  py::class_<SaveOptions>(m, "SaveOptions", "Options of shardload.save (see loader/save.h).")
      .def(py::init<>())
      .def_readwrite("overwrite", &SaveOptions::overwrite)
      .def_readwrite("metadata", &SaveOptions::metadata)
      .def_readwrite("timeout_seconds", &SaveOptions::timeout_seconds)
      .def_readwrite("step", &SaveOptions::step,
                     ">= 0: the path is a run directory ROOT, saved as ROOT/step-N, ROOT/latest "
                     "naming it when complete")
      .def_readwrite("keep_last", &SaveOptions::keep_last,
                     "with step: keep only this many highest step-N checkpoints (0: all)")
      .def_readwrite("staging_bytes", &SaveOptions::staging_bytes,
                     "the most host memory a device or non-contiguous tensor is copied through "
                     "at a time")
      .def_readwrite("snapshot_limit_bytes", &SaveOptions::snapshot_limit_bytes,
                     "async: the most host memory this rank's snapshots hold (0: half of RAM)")
      .def_readwrite("sync_fallback", &SaveOptions::sync_fallback,
                     "async: save synchronously when a snapshot does not fit, instead of "
                     "raising");

  py::class_<PhaseSeconds>(m, "PhaseSeconds", "Seconds spent in each phase of a load, this rank.")
      .def_readonly("open", &PhaseSeconds::open)
      .def_readonly("index", &PhaseSeconds::index)
      .def_readonly("plan", &PhaseSeconds::plan)
      .def_readonly("verdict", &PhaseSeconds::verdict)
      .def_readonly("transfer", &PhaseSeconds::transfer)
      .def_readonly("result", &PhaseSeconds::result)
      .def("total", &PhaseSeconds::total);

  py::class_<SizeMismatch>(m, "SizeMismatch")
      .def_readonly("key", &SizeMismatch::key)
      .def_readonly("checkpoint_shape", &SizeMismatch::checkpoint_shape)
      .def_readonly("model_shape", &SizeMismatch::model_shape)
      .def("__repr__", [](const SizeMismatch& s) {
        return "SizeMismatch(key='" + s.key +
               "', checkpoint_shape=" + shape_str(s.checkpoint_shape) +
               ", model_shape=" + shape_str(s.model_shape) + ")";
      });

  py::class_<Conversion>(m, "Conversion", "A tensor converted on load (like Tensor.copy_).")
      .def_readonly("key", &Conversion::key)
      .def_property_readonly("from_dtype",
                             [](const Conversion& c) { return std::string(dtype_name(c.from)); })
      .def_property_readonly("to_dtype",
                             [](const Conversion& c) { return std::string(dtype_name(c.to)); })
      .def("__repr__", [](const Conversion& c) {
        return "Conversion(key='" + c.key + "', from_dtype='" + std::string(dtype_name(c.from)) +
               "', to_dtype='" + std::string(dtype_name(c.to)) + "')";
      });

  py::class_<Uncovered>(m, "Uncovered", "A region of a model tensor that no stored chunk covers.")
      .def_readonly("key", &Uncovered::key)
      .def_readonly("ranks", &Uncovered::ranks)
      .def_property_readonly("offset", [](const Uncovered& u) { return u.region.offset; })
      .def_property_readonly("shape", [](const Uncovered& u) { return u.region.shape; });

  py::class_<LoadResult>(m, "LoadResult",
                         "Everything a load found and did; the verdict fields are identical on "
                         "every rank.",
                         py::dynamic_attr())
      .def_readonly("missing_keys", &LoadResult::missing_keys)
      .def_readonly("unexpected_keys", &LoadResult::unexpected_keys)
      .def_readonly("size_mismatches", &LoadResult::size_mismatches)
      .def_readonly("dtype_conversions", &LoadResult::dtype_conversions)
      .def_readonly("uncovered", &LoadResult::uncovered)
      .def_readonly("hints", &LoadResult::hints)
      .def_readonly("ok", &LoadResult::ok)
      .def_readonly("error", &LoadResult::error, "shardload's message when not ok (with hints)")
      .def_readonly("bytes_read", &LoadResult::bytes_read, "by this rank")
      .def_readonly("bytes_read_total", &LoadResult::bytes_read_total, "by all ranks")
      .def_readonly("bytes_needed_total", &LoadResult::bytes_needed_total)
      .def_readonly("seconds", &LoadResult::seconds, "PhaseSeconds of this rank")
      .def_readonly("wall_seconds", &LoadResult::wall_seconds, "max over ranks")
      .def_readonly("message_bytes", &LoadResult::message_bytes,
                    "the plan's largest message (LoadOptions.message_bytes, or the size chosen)")
      .def_readonly("transport", &LoadResult::transport, "'mpi' or 'nccl'")
      .def_readonly("checksums_verified", &LoadResult::checksums_verified)
      .def_readonly("checksums_reason", &LoadResult::checksums_reason,
                    "why checksums_verified is False ('' when it is True)")
      .def_readonly("format", &LoadResult::format, "'shardload', 'safetensors' or 'torch'")
      .def_readonly("notes", &LoadResult::notes, "what the load did or found besides reading")
      .def_property_readonly(
          "values",
          [](const LoadResult& r) {
            py::list out;
            for (const auto& [key, value] : r.values) {
              out.append(py::make_tuple(key, from_value(value)));
            }
            return out;
          },
          "the checkpoint's plain values that value_keys asked for: (key, object) pairs")
      .def_property_readonly(
          "deferred",
          [](const LoadResult& r) {
            py::list out;
            for (const auto& t : r.deferred) out.append(py::make_tuple(t.key, t.tensor));
            return out;
          },
          "the checkpoint's tensors under read_prefixes that were not declared: (key, tensor) "
          "pairs")
      .def_readonly("deferred_missing", &LoadResult::deferred_missing)
      .def_readonly("deferred_unexpected", &LoadResult::deferred_unexpected)
      .def("__repr__", &repr);

  py::class_<SaveResult>(m, "SaveResult")
      .def_readonly("num_shards", &SaveResult::num_shards)
      .def_readonly("bytes_written", &SaveResult::bytes_written, "by this rank")
      .def_readonly("bytes_written_total", &SaveResult::bytes_written_total, "by all ranks")
      .def_readonly("chunks_written", &SaveResult::chunks_written, "by this rank")
      .def_readonly("seconds", &SaveResult::seconds, "wall time, max over ranks")
      .def_readonly("path", &SaveResult::path, "the checkpoint written (ROOT/step-N with step)")
      .def_readonly("notes", &SaveResult::notes, "what the save did besides writing")
      .def_readonly("asynchronous", &SaveResult::asynchronous,
                    "written in the background (save_async)")
      .def_readonly("blocked_seconds", &SaveResult::blocked_seconds,
                    "seconds the caller was blocked, this rank")
      .def("__repr__", [](const SaveResult& r) {
        std::ostringstream s;
        s << "SaveResult(num_shards=" << r.num_shards
          << ", bytes_written_total=" << r.bytes_written_total << ", seconds=" << r.seconds << ")";
        return s.str();
      });

  py::class_<Partition>(m, "Partition",
                        "The tensors this rank holds, each declared replicated, split or a box of "
                        "a global tensor. Loads write into them in place.")
      .def(py::init<>())
      .def("add", &Partition::add, py::arg("key"), py::arg("tensor"),
           "A tensor this rank holds whole (other ranks may hold it too).")
      .def("add_split", &Partition::add_split, py::arg("key"), py::arg("local"), py::arg("dim"),
           py::arg("group") = std::vector<int>{},
           "This rank's slab of a tensor split along `dim` across `group` (all ranks when "
           "empty), in group order; sizes may differ.")
      .def("add_shard", &Partition::add_shard, py::arg("key"), py::arg("local"),
           py::arg("global_shape"), py::arg("offset"),
           "The box of a global tensor of `global_shape` that starts at `offset`.")
      .def("keys",
           [](const Partition& p) {
             std::vector<std::string> keys;
             for (const auto& e : p.entries()) keys.push_back(e.key);
             return keys;
           })
      .def("__len__", [](const Partition& p) { return p.entries().size(); });
}

}  // namespace shardload::python
