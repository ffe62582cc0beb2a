// shardload convert SRC DST [--shards N] [--overwrite] [--step N [--keep-last K]] [--select KEY]
#include <iostream>
#include <set>

#include "core/error.h"
#include "io/commit/checkpoint_dir.h"
#include "io/commit/run_dir.h"
#include "io/tensor_file.h"
#include "loader/checkpoint_info.h"
#include "tools/commands.h"
#include "tools/progress_display.h"

namespace shardload::tools {
namespace {

struct ConvertArgs {
  std::string src;
  std::string dst;
  int shards = 1;
  bool overwrite = false;
  bool quiet = false;
  int64_t step = -1;
  int keep_last = 0;
  std::string select;
};

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
      "Convert between a torch.save'd state dict (.pt/.pth/.bin), a .safetensors file and a "
      "checkpoint directory, either way. Not collective.");
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
  cmd->add_option("--select", args->select,
                  "take the tensors of this sub-dictionary of a nested .pt checkpoint: keys "
                  "joined by '.' (model, state_dict, optimizer.state; '.' for the top level); "
                  "scalar leaves (epoch, lr, ...) go to the destination's metadata");
  return [args]() -> int {
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
      print_notes(write_checkpoint(dst, tensors, args->shards, args->overwrite, metadata));
      if (args->step >= 0) print_notes(publish_step(args->dst, args->step, args->keep_last));
    }
    if (!args->quiet) progress.finish(bytes);
    std::cout << "converted " << tensors.size() << " tensors (" << bytes << " bytes) from "
              << args->src << " to " << args->dst << "\n";
    return 0;
  };
}

}  // namespace shardload::tools
