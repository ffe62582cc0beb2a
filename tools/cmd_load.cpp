// shardload load CKPT --into REF [--no-strict] [--split REGEX=DIM]... [--out OUT [--overwrite]
//   [--step N [--keep-last K]]] [--select KEY | --select-ckpt KEY --select-into KEY] [--json]
#include <ATen/ATen.h>
#include <mpi.h>

#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>

#include "io/checkpoint_source.h"
#include "io/commit/checkpoint_dir.h"
#include "loader/shardload.h"
#include "tools/commands.h"
#include "tools/progress_display.h"
#include "tools/torch_cuda.h"
#include "transport/communicator.h"

namespace shardload::tools {
namespace {

struct LoadArgs {
  std::string ckpt;
  std::string ref;
  std::string out;
  std::vector<std::string> splits;
  bool no_strict = false;
  bool json = false;
  bool skip_size_mismatch = false;
  bool no_verify = false;
  bool direct_io = false;
  bool read_in_place = false;
  std::string device = "cpu";
  bool overwrite = false;
  bool quiet = false;
  int64_t step = -1;
  int keep_last = 0;
  std::string strip_prefix;
  std::string add_prefix;
  std::string filter;
  std::string name = "Module";
  double timeout = 600;
  std::string select;       // the sub-dictionary of whichever of CKPT and REF is a .pt file
  std::string select_ckpt;  // ... of CKPT alone
  std::string select_into;  // ... of REF alone
};

/// The sub-dictionaries --select, --select-ckpt and --select-into pick: --select is CKPT's when
/// CKPT is a .pt file (or REF is not one: CKPT then refuses it), else REF's.
std::pair<std::string, std::string> selections(const LoadArgs& a) {
  const bool ckpt_takes_it = is_torch_save_path(a.ckpt) || !is_torch_save_path(a.ref);
  return {!a.select_ckpt.empty() ? a.select_ckpt
          : ckpt_takes_it        ? a.select
                                 : "",
          !a.select_into.empty() ? a.select_into
          : ckpt_takes_it        ? ""
                                 : a.select};
}

/// What a --select on REF took and left, as notes (scalar leaves, what is neither tensor nor
/// scalar, tensors outside the selection); the CKPT side's come from the load itself.
std::vector<std::string> selection_notes(const std::string& path, const std::string& select,
                                         const TensorFileContents& c) {
  constexpr size_t kShown = 20;
  auto listed = [](const auto& items, auto text) {
    std::string out;
    for (size_t i = 0; i < items.size() && i < kShown; ++i) {
      std::string t = text(items[i]);
      for (char& ch : t) {
        if (static_cast<unsigned char>(ch) < 0x20) ch = ' ';
      }
      out += (i ? ", " : "") + t;
    }
    if (items.size() > kShown) {
      out += ", ... and " + std::to_string(items.size() - kShown) + " more";
    }
    return out;
  };
  const std::string in = "In " + path + ": ";
  std::vector<std::string> out{in + "selected '" + select +
                               "': " + std::to_string(c.tensors.size()) + " tensor(s)"};
  if (!c.metadata.empty()) {
    out.push_back(in + "scalar leaves, not loaded: " + listed(c.metadata, [](const auto& m) {
                    return m.first + " = " + m.second;
                  }));
  }
  if (!c.skipped.empty()) {
    out.push_back(in + "neither tensor nor scalar, not loaded (nothing in a file is run): " +
                  listed(c.skipped, [](const auto& m) { return m.first + " (" + m.second + ")"; }));
  }
  if (!c.other_tensors.empty()) {
    out.push_back(in + "not selected: " + listed(c.other_tensors, [](const auto& m) {
                    return std::to_string(m.second) + " tensor(s) in '" +
                           (m.first.empty() ? std::string(".") : m.first) + "'";
                  }));
  }
  return out;
}

std::vector<SplitRule> parse_splits(const std::vector<std::string>& specs) {
  std::vector<SplitRule> rules;
  for (const auto& s : specs) {
    auto eq = s.rfind('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == s.size()) {
      throw UsageError("--split " + s + ": expected REGEX=DIM");
    }
    SplitRule r;
    r.pattern = s.substr(0, eq);
    try {
      size_t used = 0;
      r.dim = std::stoll(s.substr(eq + 1), &used);
      if (used != s.size() - eq - 1) throw std::invalid_argument(s);
    } catch (const std::exception&) {
      throw UsageError("--split " + s + ": DIM must be an integer");
    }
    rules.push_back(std::move(r));
  }
  return rules;
}

nlohmann::json shape_json(const Shape& s) { return nlohmann::json(s); }

/// A "VmRSS" or "VmHWM" line of /proc/self/status, in bytes (-1 where there is none).
int64_t proc_status_bytes(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1)) * 1024;
  }
  return -1;
}

/// Resets this process's peak resident memory (VmHWM) to its current one (Linux).
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

/// Puts every tensor of the partition on this rank's GPU (local_cuda_device).
void move_to_local_gpu(Partition& partition, int local_rank) {
  const c10::Device device = local_cuda_device(local_rank);
  for (auto& e : partition.entries()) e.tensor = e.tensor.to(device);
}

nlohmann::json result_json(const LoadResult* r, bool strict, const std::string& error, double secs,
                           int64_t bytes_read) {
  nlohmann::json j;
  j["ok"] = r ? r->ok && error.empty() : false;
  j["strict"] = strict;
  j["missing_keys"] = r ? r->missing_keys : std::vector<std::string>{};
  j["unexpected_keys"] = r ? r->unexpected_keys : std::vector<std::string>{};
  j["size_mismatches"] = nlohmann::json::array();
  j["dtype_conversions"] = nlohmann::json::array();
  j["uncovered"] = nlohmann::json::array();
  j["hints"] = r ? r->hints : std::vector<std::string>{};
  if (r) {
    for (const auto& m : r->size_mismatches) {
      j["size_mismatches"].push_back({{"key", m.key},
                                      {"checkpoint_shape", shape_json(m.checkpoint_shape)},
                                      {"model_shape", shape_json(m.model_shape)}});
    }
    for (const auto& c : r->dtype_conversions) {
      j["dtype_conversions"].push_back(
          {{"key", c.key}, {"from", dtype_name(c.from)}, {"to", dtype_name(c.to)}});
    }
    for (const auto& u : r->uncovered) {
      j["uncovered"].push_back({{"key", u.key},
                                {"ranks", u.ranks},
                                {"offset", shape_json(u.region.offset)},
                                {"shape", shape_json(u.region.shape)}});
    }
  }
  j["error"] = error.empty() ? nlohmann::json(nullptr) : nlohmann::json(error);
  j["bytes_read"] = bytes_read;
  j["seconds"] = secs;
  if (r) {
    j["phase_seconds"] = {{"open", r->seconds.open},         {"index", r->seconds.index},
                          {"plan", r->seconds.plan},         {"verdict", r->seconds.verdict},
                          {"transfer", r->seconds.transfer}, {"result", r->seconds.result}};
  }
  j["transport"] = r ? r->transport : "mpi";
  j["transport_reason"] = r ? r->transport_reason : "";
  j["checksums_verified"] = r ? r->checksums_verified : false;
  j["checksums_reason"] = r ? r->checksums_reason : "";
  j["format"] = r ? r->format : "";
  j["notes"] = r ? r->notes : std::vector<std::string>{};
  return j;
}

/// Writes the loaded partition to OUT: a checkpoint directory saved collectively in the current
/// layout (into a run directory as OUT/step-N with `step`), or a single file assembled by rank 0
/// (through a temporary checkpoint, in REF's order). Returns the save's notes.
std::vector<std::string> write_out(const Partition& partition, const TensorList& ref,
                                   const std::string& out, const LoadArgs& a,
                                   const Communicator& comm) {
  const int rank = comm.rank();
  const bool overwrite = a.overwrite;
  if (!is_tensor_file(out)) {
    return save(partition, out, MPI_COMM_WORLD,
                SaveOptions{.overwrite = overwrite,
                            .timeout_seconds = a.timeout,
                            .step = a.step,
                            .keep_last = a.keep_last})
        .notes;
  }
  std::string tmp = out + ".shardload-tmp-ckpt";
  // Rank 0 decides (a leftover from an interrupted run is replaced); the others learn it.
  int64_t exists = comm.allreduce_max(rank == 0 && path_exists(tmp) ? int64_t{1} : int64_t{0});
  save(partition, tmp, MPI_COMM_WORLD,
       SaveOptions{.overwrite = exists != 0, .timeout_seconds = a.timeout});
  int64_t rc = 0;
  std::string error;
  if (rank == 0) {
    try {
      TensorList all = read_checkpoint(tmp);
      std::map<std::string, at::Tensor> by_key;
      for (auto& t : all) by_key[t.key] = t.tensor;
      TensorList ordered;
      for (const auto& t : ref) ordered.push_back({t.key, by_key.at(t.key)});
      if (path_exists(out) && !overwrite) {
        throw UsageError(out + ": already exists (pass --overwrite to replace it)");
      }
      write_tensor_file(out, ordered);
    } catch (const Error& e) {
      rc = e.exit_code();
      error = e.what();
    }
    remove_tree_noexcept(tmp);
  }
  rc = comm.allreduce_max(rc);  // only rank 0 contributes
  if (rc != 0)
    throw_error(rc == 2 ? ErrorKind::kUsage : ErrorKind::kFormat,
                rank == 0 ? error : "writing " + out + " failed on rank 0");
  return {};
}

}  // namespace

Runner add_load(CLI::App& app) {
  auto a = std::make_shared<LoadArgs>();
  CLI::App* cmd = app.add_subcommand(
      "load",
      "Collective: load CKPT into the model that REF defines, partitioned over the ranks, and "
      "report PyTorch's strict/non-strict verdict.");
  cmd->add_option("CKPT", a->ckpt,
                  "what to load: a checkpoint directory, a run directory (its latest), a Hugging "
                  "Face directory (model.safetensors.index.json and its shards, or "
                  "model.safetensors), a .safetensors or a .pt file")
      ->required();
  cmd->add_option("--into", a->ref,
                  "the target model: .pt/.safetensors file or checkpoint directory (its keys, "
                  "shapes, dtypes and initial values)")
      ->required();
  cmd->add_flag("--no-strict", a->no_strict, "report missing/unexpected keys instead of failing");
  cmd->add_option("--split", a->splits,
                  "REGEX=DIM: split tensors whose key matches REGEX (a search, first match wins) "
                  "along DIM across the ranks; repeatable");
  cmd->add_option("--out", a->out,
                  "write the result: .pt/.safetensors (assembled by rank 0) or a checkpoint "
                  "directory (saved collectively in this layout)");
  cmd->add_flag("--json", a->json, "rank 0 prints one JSON object on stdout");
  cmd->add_flag("--skip-size-mismatch", a->skip_size_mismatch,
                "report size mismatches without failing (those tensors keep their values)");
  cmd->add_option("--strip-prefix", a->strip_prefix,
                  "remove this prefix from checkpoint keys (e.g. module.)");
  cmd->add_option("--add-prefix", a->add_prefix, "put this prefix in front of checkpoint keys");
  cmd->add_option("--filter", a->filter, "only keys matching this regex take part");
  cmd->add_option("--name", a->name, "model name in error messages");
  cmd->add_flag("--overwrite", a->overwrite,
                "replace an existing --out (a checkpoint or an empty directory; never anything "
                "else)");
  cmd->add_option("--step", a->step,
                  "--out is a run directory: save OUT/step-N, then OUT/latest names it")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--keep-last", a->keep_last,
                  "with --step: keep only the K highest steps of OUT (never the latest)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--no-verify", a->no_verify,
                "skip the checksum checks (the result says so); only for measuring their cost");
  cmd->add_flag("--direct-io", a->direct_io,
                "read tensor bytes around the page cache (O_DIRECT) where the file system allows: "
                "for cold restarts of checkpoints larger than free memory");
  cmd->add_flag("--read-in-place", a->read_in_place,
                "read each tensor's bytes straight into it, no staging copy (a corrupt chunk then "
                "leaves that tensor holding unverified bytes when the load fails)");
  cmd->add_option("--device", a->device,
                  "where each rank's partition of REF lives: cpu, or cuda (the GPU of the rank's "
                  "local rank): CUDA tensors are loaded over NCCL where every rank has a GPU of "
                  "its own")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  cmd->add_option("--timeout", a->timeout,
                  "seconds a rank waits for the others at a phase boundary, or for a transfer "
                  "to progress, before the job ends naming the ranks that did not arrive "
                  "(default 600; 0 waits forever)")
      ->check(CLI::NonNegativeNumber);
  cmd->add_flag("--quiet", a->quiet, "no progress display on stderr");
  cmd->add_option("--select", a->select,
                  "the sub-dictionary of a nested training checkpoint to take the tensors from: "
                  "keys joined by '.' (model, state_dict, optimizer.state; '.' the top level); "
                  "CKPT's when CKPT is a .pt file, else REF's; scalar leaves are reported, not "
                  "loaded");
  cmd->add_option("--select-ckpt", a->select_ckpt, "--select for CKPT alone");
  cmd->add_option("--select-into", a->select_into, "--select for REF alone");
  return [a]() -> int {
    Communicator comm(MPI_COMM_WORLD, a->timeout);
    const int rank = comm.rank();
    const int ranks = comm.size();
    const int local_rank = comm.local_rank();
    LoadOptions options;
    options.timeout_seconds = a->timeout;
    options.strict = !a->no_strict;
    options.skip_size_mismatch = a->skip_size_mismatch;
    options.verify_checksums = !a->no_verify;
    options.direct_io = a->direct_io;
    options.read_in_place = a->read_in_place;
    options.checkpoint_prefix = a->strip_prefix;
    options.model_prefix = a->add_prefix;
    options.key_filter = a->filter;
    options.name = a->name;
    const auto [ckpt_select, ref_select] = selections(*a);
    options.select = ckpt_select;
    std::optional<ProgressDisplay> progress;  // rank 0's stderr
    if (rank == 0 && !a->quiet) {
      progress.emplace(ProgressDisplay::for_stderr("load"));
      options.progress = progress->callback();
    }

    LoadResult result;
    const LoadResult* verdict = nullptr;
    std::string error;
    int rc = 0;
    double secs = 0;
    int64_t rss_added = -1, staging_peak = -1;  // max over ranks, once a load returned
    std::vector<std::string> notes;             // what load and save did on their own
    try {
      // Every rank reads REF and builds its partition; all must succeed before the collective
      // load starts, or none enters it.
      TensorList ref;
      Partition partition;
      std::string local_error;
      int local_rc = 0;
      try {
        if (a->keep_last > 0 && a->step < 0) throw UsageError("--keep-last needs --step");
        if (a->step >= 0 && (a->out.empty() || is_tensor_file(a->out))) {
          throw UsageError("--step needs --out naming a run directory");
        }
        auto rules = parse_splits(a->splits);
        if (!is_tensor_file(a->ref)) {
          ref = read_checkpoint(a->ref, ref_select);
        } else if (ref_select.empty()) {
          ref = read_tensor_file(a->ref);
        } else {
          TensorFileContents c;
          try {
            c = read_tensor_file(a->ref, TensorFileOptions{.select = ref_select});
          } catch (const UsageError& e) {
            if (!a->select_into.empty()) throw;
            throw UsageError(std::string(e.what()) +
                             " (--select is CKPT's when CKPT is a .pt file, else REF's; "
                             "--select-ckpt KEY and --select-into KEY name the side)");
          }
          if (rank == 0) notes = selection_notes(a->ref, ref_select, c);
          ref = std::move(c.tensors);
        }
        partition = Partition::from_global(ref, rules, rank, ranks);
        if (a->device == "cuda") move_to_local_gpu(partition, local_rank);
      } catch (const Error& e) {
        local_error = e.what();
        local_rc = e.exit_code();
      }
      int64_t worst = comm.allreduce_max(static_cast<int64_t>(local_rc));
      if (worst != 0) {
        throw_error(worst == 2 ? ErrorKind::kUsage : ErrorKind::kFormat,
                    local_error.empty() ? "another rank failed to read " + a->ref : local_error);
      }
      try {
        // What the load itself adds to resident memory, the partition already resident.
        reset_peak_rss();
        const int64_t rss_before = proc_status_bytes("VmRSS");
        result = load(partition, a->ckpt, MPI_COMM_WORLD, options);
        const int64_t peak = proc_status_bytes("VmHWM");
        rss_added =
            comm.allreduce_max(rss_before < 0 || peak < 0 ? int64_t{-1} : peak - rss_before);
        staging_peak = comm.allreduce_max(result.staging_bytes_peak);
        verdict = &result;
        secs = result.wall_seconds;
        if (progress) progress->finish(result.bytes_read_total);
        notes.insert(notes.end(), result.notes.begin(), result.notes.end());
      } catch (const LoadVerdictError& e) {
        result = e.result();
        notes.insert(notes.end(), result.notes.begin(), result.notes.end());
        verdict = &result;
        secs = result.wall_seconds;
        throw;
      }
      if (!a->out.empty()) {
        auto saved = write_out(partition, ref, a->out, *a, comm);
        notes.insert(notes.end(), saved.begin(), saved.end());
      }
    } catch (const TimeoutError& e) {
      if (a->json && e.reporter()) {
        std::cout << result_json(nullptr, options.strict, e.what(), 0, 0).dump() << std::endl;
      }
      end_job_after_timeout(e, "load");
    } catch (const Error& e) {
      error = e.what();
      rc = e.exit_code();
    }
    if (rank == 0) {
      print_notes(notes);
      if (a->json) {
        nlohmann::json j =
            result_json(verdict, options.strict, error, secs, result.bytes_read_total);
        if (rss_added >= 0) {
          // Most any rank's resident memory grew during the load, and its staging peak.
          j["load_rss_added_bytes"] = rss_added;
          j["staging_peak_bytes"] = staging_peak;
          j["message_bytes"] = result.message_bytes;
        }
        std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << std::endl;
      }
      if (!error.empty()) {
        std::cerr << (rc == 1 ? "" : "shardload load: error: ") << error << "\n";
      } else if (!a->json) {
        std::cout << "loaded " << a->ckpt << " into " << a->ref << " on " << ranks
                  << " rank(s): " << result.bytes_read_total << " bytes read in " << secs << " s";
        if (!result.missing_keys.empty()) {
          std::cout << "; missing " << result.missing_keys.size() << " key(s)";
        }
        if (!result.unexpected_keys.empty()) {
          std::cout << "; unexpected " << result.unexpected_keys.size() << " key(s)";
        }
        if (!result.checksums_verified) {
          std::cout << "; checksums not verified: " << result.checksums_reason;
        }
        std::cout << "\n";
      }
    }
    return rc;
  };
}

}  // namespace shardload::tools
