// shardload convert SRC DST [--shards N] [--overwrite]
#include <iostream>

#include "core/error.h"
#include "io/checkpoint_dir.h"
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
};

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
  cmd->add_flag("--overwrite", args->overwrite, "replace an existing destination");
  cmd->add_flag("--quiet", args->quiet, "no progress display on stderr");
  return [args]() -> int {
    if (world_rank() != 0) return 0;
    // Reading, then writing: progress at each step, the summary over both.
    ProgressDisplay progress = ProgressDisplay::for_stderr("convert");
    auto report = [&](const char* phase, int64_t done, int64_t total) {
      if (!args->quiet)
        progress.update(
            {.operation = "convert", .phase = phase, .bytes_done = done, .bytes_total = total});
    };
    report("read", 0, 0);
    TensorList tensors;
    if (is_tensor_file(args->src)) {
      tensors = read_tensor_file(args->src);
    } else {
      tensors = read_checkpoint(args->src);
    }
    int64_t bytes = 0;
    for (const auto& t : tensors) bytes += static_cast<int64_t>(t.tensor.nbytes());
    report("write", bytes, 2 * bytes);
    if (is_tensor_file(args->dst)) {
      if (path_exists(args->dst) && !args->overwrite) {
        throw UsageError(args->dst + ": already exists (pass --overwrite to replace it)");
      }
      write_tensor_file(args->dst, tensors);
    } else {
      write_checkpoint(args->dst, tensors, args->shards, args->overwrite);
    }
    if (!args->quiet) progress.finish(bytes);
    std::cout << "converted " << tensors.size() << " tensors (" << bytes << " bytes) from "
              << args->src << " to " << args->dst << "\n";
    return 0;
  };
}

}  // namespace shardload::tools
