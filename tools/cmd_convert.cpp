// shardload convert SRC DST [--format shardload|dcp] [--shards N] [--overwrite]
//                           [--step N [--keep-last K]] [--select KEY]
#include <ATen/ATen.h>
#include <mpi.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <set>

#include "core/error.h"
#include "core/wire.h"
#include "io/commit/checkpoint_dir.h"
#include "io/commit/run_dir.h"
#include "io/dcp/dcp_writer.h"
#include "io/file_system.h"
#include "io/tensor_file.h"
#include "io/torch_dtype.h"
#include "loader/checkpoint_info.h"
#include "loader/shardload.h"
#include "tools/commands.h"
#include "tools/progress_display.h"
#include "transport/communicator.h"

namespace shardload::tools {
namespace {

struct ConvertArgs {
  std::string src;
  std::string dst;
  int shards = 0;  ///< 0: not given (one file; under mpirun, one per rank)
  bool overwrite = false;
  bool quiet = false;
  int64_t step = -1;
  int keep_last = 0;
  std::string select;
  std::string format = "shardload";
};

/// Tensors of at least this many bytes are split along dim 0 across the ranks of a collective
/// conversion; smaller ones go whole to the rank with the fewest bytes so far.
constexpr int64_t kSplitBytes = int64_t{1} << 20;

/// One tensor of the source, as every rank learns it from rank 0.
struct SourceTensor {
  std::string key;
  DType dtype;
  Shape shape;
};

/// Rank 0 reads the source's listing and index; every rank receives its tensors (in the
/// checkpoint's order) and values, or rank 0's error.
std::pair<std::vector<SourceTensor>, ValueList> share_listing(const Communicator& comm,
                                                              const std::string& src,
                                                              const ConvertArgs& args) {
  std::string bytes;
  if (comm.rank() == 0) {
    WireWriter w;
    try {
      if (path_exists(args.dst) && !args.overwrite && args.step < 0 &&
          (!std::filesystem::is_directory(args.dst) || !std::filesystem::is_empty(args.dst))) {
        throw UsageError(args.dst + ": already exists (pass --overwrite to replace it)");
      }
      const CheckpointInfo info = read_checkpoint_info(src);
      std::vector<ChunkRecord> firsts;
      std::set<std::string> seen;
      for (const auto& row : info.index) {
        if (seen.insert(row.key).second) firsts.push_back(row);
      }
      w.u8(0);
      w.str(serialize_records(firsts));
      w.str(encode_values(info.source.manifest.values));
    } catch (const Error& e) {
      w = WireWriter();
      w.u8(static_cast<uint8_t>(e.exit_code()));
      w.str(e.what());
    }
    bytes = w.take();
  }
  comm.broadcast(bytes, 0);
  WireReader r(bytes, "the source's listing", /*from_peer=*/true);
  const uint8_t code = r.u8("status");
  if (code != 0) {
    const std::string what = r.str("error");
    if (code == 2) throw UsageError(what);
    throw FormatError(what);
  }
  std::vector<ChunkRecord> rows;
  deserialize_records(r.str("rows"), rows);
  ValueList values = decode_values(r.str("values"), "the source's values");
  std::vector<SourceTensor> out;
  for (auto& row : rows)
    out.push_back({std::move(row.key), row.dtype, std::move(row.global_shape)});
  return {std::move(out), std::move(values)};
}

/// The dotted key's components, then the value's nesting as DCP flattens it: dicts recurse,
/// lists only where they hold dicts; each leaf one item of its own.
void flatten_value(const std::string& key, std::vector<DcpPathPart> path, const Value& v,
                   ValueList& items,
                   std::vector<std::pair<std::string, std::vector<DcpPathPart>>>& paths) {
  const bool dict = v.kind == Value::Kind::kDict;
  bool list_of_dicts = v.kind == Value::Kind::kList && !v.items.empty();
  for (const auto& item : v.items) list_of_dicts = list_of_dicts && item.kind == Value::Kind::kDict;
  bool str_keys = dict;
  for (size_t i = 0; dict && i < v.items.size(); i += 2) {
    str_keys = str_keys && v.items[i].kind == Value::Kind::kStr;
  }
  if (dict && str_keys && !v.items.empty()) {
    for (size_t i = 0; i + 1 < v.items.size(); i += 2) {
      auto sub = path;
      sub.push_back({false, 0, v.items[i].text});
      flatten_value(key + "." + v.items[i].text, std::move(sub), v.items[i + 1], items, paths);
    }
    return;
  }
  if (list_of_dicts) {
    for (size_t i = 0; i < v.items.size(); ++i) {
      auto sub = path;
      sub.push_back({true, static_cast<int64_t>(i), ""});
      flatten_value(key + "." + std::to_string(i), std::move(sub), v.items[i], items, paths);
    }
    return;
  }
  items.emplace_back(key, v);
  paths.emplace_back(key, std::move(path));
}

/// Each rank's share: whole tensors, balanced by bytes, and slabs of the large ones.
int convert_collective(const ConvertArgs& args) {
  Communicator comm(MPI_COMM_WORLD, 600);
  const int rank = comm.rank();
  const int ranks = comm.size();
  ResolvedCheckpoint where = resolve_checkpoint(args.src);  // a run directory: its latest
  if (rank == 0) print_notes(where.notes);
  auto [tensors, values] = share_listing(comm, where.path, args);
  const bool to_dcp = args.format == "dcp";

  Partition partition;
  std::vector<int64_t> assigned(static_cast<size_t>(ranks), 0);
  struct Mine {
    const SourceTensor* t;
    Shape offset;
    Shape sizes;
  };
  std::vector<Mine> mine;
  auto options = [](DType d) { return at::TensorOptions().dtype(scalar_type_of(d)); };
  for (const SourceTensor& t : tensors) {
    const int64_t bytes = numel(t.shape) * dtype_size(t.dtype);
    if (ranks > 1 && bytes >= kSplitBytes && !t.shape.empty() && t.shape[0] >= ranks) {
      const int64_t rows = t.shape[0];
      const int64_t lo = rows * rank / ranks, hi = rows * (rank + 1) / ranks;
      Shape offset(t.shape.size(), 0), sizes = t.shape;
      offset[0] = lo;
      sizes[0] = hi - lo;
      partition.add_shard(t.key, at::empty(sizes, options(t.dtype)), t.shape, offset);
      mine.push_back({&t, offset, sizes});
      for (int r = 0; r < ranks; ++r) assigned[static_cast<size_t>(r)] += bytes / ranks;
      continue;
    }
    const auto owner =
        static_cast<int>(std::min_element(assigned.begin(), assigned.end()) - assigned.begin());
    assigned[static_cast<size_t>(owner)] += bytes;
    if (owner == rank) {
      partition.add(t.key, at::empty(t.shape, options(t.dtype)));
      mine.push_back({&t, Shape(t.shape.size(), 0), t.shape});
    }
  }
  LoadOptions load_options;
  load_options.allow_pickle = true;  // pickled values are copied as bytes, never run
  for (const auto& [key, v] : values) load_options.value_keys.push_back(key);
  LoadResult loaded = load(partition, where.path, MPI_COMM_WORLD, load_options);

  int64_t my_bytes = 0;
  for (const auto& e : partition.entries()) my_bytes += static_cast<int64_t>(e.tensor.nbytes());
  std::vector<std::string> notes;
  if (!to_dcp) {
    std::string dst = args.dst;
    if (args.step >= 0 && rank == 0) dst = prepare_run_dir(args.dst, args.step);
    comm.broadcast(dst, 0);
    SaveOptions save_options;
    save_options.overwrite = args.overwrite;
    save_options.values = loaded.values;
    notes = save(partition, dst, MPI_COMM_WORLD, save_options).notes;
    if (args.step >= 0 && rank == 0) {
      auto more = publish_step(args.dst, args.step, args.keep_last);
      notes.insert(notes.end(), more.begin(), more.end());
    }
  } else {
    if (args.step >= 0) throw UsageError("--step writes shardload run directories, not DCP");
    if (rank == 0) {
      // DCP's own marker of a whole checkpoint is its .metadata, written last: an old one goes
      // first, so that a crash in between leaves no checkpoint that looks whole.
      std::filesystem::create_directories(args.dst);
      std::filesystem::remove(args.dst + "/" + kDcpMetadataName);
    }
    comm.barrier();
    std::vector<DcpWriteChunk> chunks;
    for (size_t i = 0; i < mine.size(); ++i) {
      const auto& m = mine[i];
      chunks.push_back({m.t->key, m.t->dtype, m.t->shape, m.offset, m.sizes,
                        partition.entries()[i].tensor.data_ptr()});
    }
    ValueList items;
    std::vector<std::pair<std::string, std::vector<DcpPathPart>>> paths;
    if (rank == 0) {
      for (const auto& [key, v] : loaded.values) {
        std::vector<DcpPathPart> path;
        size_t at = 0;
        for (size_t dot; (dot = key.find('.', at)) != std::string::npos; at = dot + 1) {
          path.push_back({false, 0, key.substr(at, dot - at)});
        }
        path.push_back({false, 0, key.substr(at)});
        flatten_value(key, std::move(path), v, items, paths);
      }
    }
    DcpMetadata fragment = write_dcp_data_file(args.dst, rank, chunks, items);
    fragment.planner_data = std::move(paths);
    auto fragments = comm.allgather(serialize_dcp_metadata(fragment));
    if (rank == 0) {
      std::vector<DcpMetadata> all;
      for (const auto& f : fragments) all.push_back(deserialize_dcp_metadata(f));
      write_dcp_metadata(args.dst, merge_dcp_metadata(std::move(all)));
    }
    comm.barrier();
  }
  const std::vector<int64_t> bytes = comm.allgather(my_bytes);
  if (rank == 0) {
    print_notes(notes);
    std::cout << "converted " << tensors.size() << " tensors ("
              << std::accumulate(bytes.begin(), bytes.end(), int64_t{0}) << " bytes) and "
              << loaded.values.size() << " values from " << args.src << " to " << args.dst
              << (to_dcp ? " (DCP)" : "") << " on " << ranks << " rank(s)\n";
  }
  return 0;
}

/// Reads a nested .pt checkpoint's sub-dictionary `select`, says what was taken and what not,
/// and returns the metadata to write (scalar leaves, as strings HDF5 and JSON can hold).
TensorList read_selected(const ConvertArgs& args,
                         std::vector<std::pair<std::string, std::string>>& metadata) {
  if (!is_tensor_file(args.src)) {
    throw UsageError("--select picks a sub-dictionary of a .pt checkpoint; " + args.src +
                     " is a checkpoint directory");
  }
  TensorFileContents c = read_tensor_file(args.src, TensorFileOptions{.select = args.select});
  std::set<std::string> seen;
  for (auto& [key, value] : c.metadata) {
    if (seen.insert(key).second) metadata.emplace_back(std::move(key), std::move(value));
  }
  constexpr size_t kShown = 20;
  std::cout << "selected '" << args.select << "': " << c.tensors.size() << " tensors, "
            << metadata.size() << " scalar leaves as metadata"
            << (is_tensor_file(args.dst) && !args.dst.ends_with(".safetensors")
                    ? " (not written: a .pt file has no metadata)"
                    : "")
            << "\n";
  for (size_t i = 0; i < c.skipped.size() && i < kShown; ++i) {
    std::cout << "  skipped " << c.skipped[i].first << ": " << c.skipped[i].second << "\n";
  }
  if (c.skipped.size() > kShown) std::cout << "  ... " << c.skipped.size() - kShown << " more\n";
  for (size_t i = 0; i < c.other_tensors.size() && i < kShown; ++i) {
    const auto& [path, n] = c.other_tensors[i];
    std::cout << "  not selected: " << n << " tensor(s) in '" << (path.empty() ? "." : path)
              << "'\n";
  }
  return std::move(c.tensors);
}

}  // namespace

Runner add_convert(CLI::App& app) {
  auto args = std::make_shared<ConvertArgs>();
  CLI::App* cmd = app.add_subcommand(
      "convert",
      "Convert between a torch.save'd state dict (.pt/.pth/.bin), a .safetensors file, a "
      "shardload checkpoint and a torch.distributed.checkpoint (DCP) directory, either way. "
      "Between directories it is collective: under mpirun each rank reads its share once and "
      "writes it; to or from a file, rank 0 does it alone.");
  cmd->add_option("SRC", args->src, "source: .pt/.pth/.bin, .safetensors or checkpoint directory")
      ->required();
  cmd->add_option("DST", args->dst, "destination: a file by extension, else a checkpoint directory")
      ->required();
  cmd->add_option("--shards", args->shards, "shard files of a checkpoint destination")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--overwrite", args->overwrite,
                "replace an existing destination (only a checkpoint or an empty directory)");
  cmd->add_option("--step", args->step,
                  "DST is a run directory: write DST/step-N, then DST/latest names it")
      ->check(CLI::NonNegativeNumber);
  cmd->add_option("--keep-last", args->keep_last,
                  "with --step: keep only the K highest steps of DST (never the latest)")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--quiet", args->quiet, "no progress display on stderr");
  cmd->add_option("--format", args->format,
                  "of a directory DST: shardload (default) or dcp (a directory dcp.load reads)")
      ->check(CLI::IsMember({"shardload", "dcp"}));
  cmd->add_option("--select", args->select,
                  "take the tensors of this sub-dictionary of a nested .pt checkpoint: keys "
                  "joined by '.' (model, state_dict, optimizer.state; '.' for the top level); "
                  "scalar leaves (epoch, lr, ...) go to the destination's metadata");
  return [args]() -> int {
    // Directory to directory: collective, unless one process is to write --shards N files of
    // whole tensors (the one-process conversion, as before).
    int under_mpirun = 0;  // tools/main.cpp starts MPI for every command under mpirun
    MPI_Initialized(&under_mpirun);
    if (args->shards > 0 && args->format == "dcp") {
      throw UsageError("--shards is for a shardload destination (DCP: one file per rank)");
    }
    const bool single_with_shards = args->shards > 0 && !under_mpirun;
    if (args->select.empty() && !is_tensor_file(args->src) && !is_tensor_file(args->dst) &&
        !single_with_shards) {
      if (args->shards > 0) {
        throw UsageError(
            "--shards is for a conversion by one process; under mpirun each rank "
            "writes one file");
      }
      // Collective; a plain `shardload convert` (no mpirun) starts MPI as a singleton here,
      // and only here: conversions to or from a file need none.
      struct Singleton {
        bool started = false;
        Singleton() {
          int initialized = 0;
          MPI_Initialized(&initialized);
          if (!initialized) {
            int provided = 0;
            MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
            started = true;
          }
        }
        ~Singleton() {
          if (started) MPI_Finalize();
        }
      } singleton;
      return convert_collective(*args);
    }
    if (args->format == "dcp") {
      throw UsageError("--format dcp writes a directory from a checkpoint directory");
    }
    if (world_rank() != 0) return 0;
    if (args->keep_last > 0 && args->step < 0) throw UsageError("--keep-last needs --step");
    if (args->step >= 0 && is_tensor_file(args->dst)) {
      throw UsageError(args->dst + ": --step needs a run directory, not a file");
    }
    // Reading, then writing: progress at each step, the summary over both.
    ProgressDisplay progress = ProgressDisplay::for_stderr("convert");
    auto report = [&](const char* phase, int64_t done, int64_t total) {
      if (!args->quiet)
        progress.update(
            {.operation = "convert", .phase = phase, .bytes_done = done, .bytes_total = total});
    };
    report("read", 0, 0);
    TensorList tensors;
    std::vector<std::pair<std::string, std::string>> metadata;
    if (!args->select.empty()) {
      tensors = read_selected(*args, metadata);
    } else if (is_tensor_file(args->src)) {
      tensors = read_tensor_file(args->src);
    } else {
      ResolvedCheckpoint src = resolve_checkpoint(args->src);  // a run directory: its latest
      print_notes(src.notes);
      tensors = read_checkpoint(src.path);
    }
    int64_t bytes = 0;
    for (const auto& t : tensors) bytes += static_cast<int64_t>(t.tensor.nbytes());
    report("write", bytes, 2 * bytes);
    if (is_tensor_file(args->dst)) {
      if (path_exists(args->dst) && !args->overwrite) {
        throw UsageError(args->dst + ": already exists (pass --overwrite to replace it)");
      }
      write_tensor_file(args->dst, tensors, metadata);
    } else {
      std::string dst = args->step >= 0 ? prepare_run_dir(args->dst, args->step) : args->dst;
      print_notes(
          write_checkpoint(dst, tensors, std::max(args->shards, 1), args->overwrite, metadata));
      if (args->step >= 0) print_notes(publish_step(args->dst, args->step, args->keep_last));
    }
    if (!args->quiet) progress.finish(bytes);
    std::cout << "converted " << tensors.size() << " tensors (" << bytes << " bytes) from "
              << args->src << " to " << args->dst << "\n";
    return 0;
  };
}

}  // namespace shardload::tools
