// shardload inspect CKPT [--json]; shardload verify CKPT
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "loader/checkpoint_info.h"
#include "sharding/box.h"
#include "tools/commands.h"

namespace shardload::tools {
namespace {

struct InspectArgs {
  std::string dir;
  bool json = false;
  std::string select;
};

std::string human_bytes(int64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  std::ostringstream s;
  s << std::fixed << std::setprecision(u ? 1 : 0) << v << " " << units[u];
  return s.str();
}

}  // namespace

Runner add_inspect(CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  CLI::App* cmd = app.add_subcommand(
      "inspect", "List a checkpoint's tensors: keys, dtypes, shapes, chunks, files, bytes.");
  cmd->add_option("CKPT", args->dir,
                  "checkpoint directory, run directory (its latest), Hugging Face directory, "
                  ".safetensors or .pt file")
      ->required();
  cmd->add_flag("--json", args->json, "print one JSON object");
  cmd->add_option("--select", args->select, "a .pt checkpoint's sub-dictionary (see convert)");
  return [args]() -> int {
    if (world_rank() != 0) return 0;
    // A run directory: its latest.
    CheckpointInfo info = read_checkpoint_info(args->dir, args->select);
    print_notes(info.notes);
    const auto& m = info.manifest;
    // Tensors in order of first appearance, with their chunks.
    std::vector<std::string> order;
    std::map<std::string, std::vector<const ChunkRecord*>> chunks;
    int64_t total = 0;
    for (const auto& row : info.index) {
      if (!chunks.count(row.key)) order.push_back(row.key);
      chunks[row.key].push_back(&row);
      total += static_cast<int64_t>(row.nbytes);
    }
    if (args->json) {
      nlohmann::json j;
      j["path"] = args->dir;
      j["checkpoint"] = info.dir;
      j["format"] = std::string(source_format_name(info.source.format));
      j["description"] = info.source.description;
      j["format_version"] = m.format_version;
      j["library_version"] = m.library_version;
      j["num_ranks"] = m.num_ranks;
      j["created"] = m.created;
      j["shards"] = m.shard_files;
      j["metadata"] = nlohmann::json::object();
      for (const auto& [k, v] : m.metadata) j["metadata"][k] = v;
      j["total_bytes"] = total;
      j["tensors"] = nlohmann::json::array();
      for (const auto& key : order) {
        const auto& rows = chunks[key];
        nlohmann::json t;
        t["key"] = key;
        t["dtype"] = std::string(dtype_name(rows[0]->dtype));
        t["shape"] = rows[0]->global_shape;
        int64_t bytes = 0;
        t["chunks"] = nlohmann::json::array();
        for (const auto* r : rows) {
          bytes += static_cast<int64_t>(r->nbytes);
          t["chunks"].push_back({{"file", m.shard_files[static_cast<size_t>(r->file)]},
                                 {"dataset", r->dataset},
                                 {"data_offset", r->data_offset},
                                 {"offset", r->offset},
                                 {"shape", r->shape},
                                 {"bytes", r->nbytes},
                                 {"checksum", r->checksum},
                                 {"block_checksums", r->block_checksums.size()}});
        }
        t["bytes"] = bytes;
        j["tensors"].push_back(t);
      }
      std::cout << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      return 0;
    }
    if (info.source.format == SourceFormat::kShardload) {
      std::cout << info.dir << ": shardload checkpoint, format v" << m.format_version << ", "
                << m.shard_files.size() << " shard file(s), saved by " << m.num_ranks
                << " rank(s) at " << m.created << " (shardload " << m.library_version << ")\n";
    } else {
      std::cout << info.dir << ": " << info.source.description << ", " << m.shard_files.size()
                << " file(s); " << info.source.missing_checksums_reason() << "\n";
    }
    for (const auto& [k, v] : m.metadata) std::cout << "  metadata " << k << " = " << v << "\n";
    std::cout << order.size() << " tensors, " << info.index.size() << " chunks, "
              << human_bytes(total) << "\n";
    for (const auto& key : order) {
      const auto& rows = chunks[key];
      int64_t bytes = 0;
      for (const auto* r : rows) bytes += static_cast<int64_t>(r->nbytes);
      std::cout << "  " << key << "  " << dtype_name(rows[0]->dtype) << " "
                << shape_str(rows[0]->global_shape) << "  " << human_bytes(bytes) << "\n";
      for (const auto* r : rows) {
        std::cout << "      chunk " << box_str(Box{r->offset, r->shape}) << "  "
                  << m.shard_files[static_cast<size_t>(r->file)];
        if (info.source.format != SourceFormat::kShardload) {
          std::cout << " at byte " << r->data_offset;  // a byte range of the file
        } else {
          std::cout << ":" << r->dataset;
          if (r->data_offset) std::cout << "+" << r->data_offset;
        }
        std::cout << "\n";
      }
    }
    return 0;
  };
}

Runner add_verify(CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  CLI::App* cmd = app.add_subcommand(
      "verify", "Check that every file is present, the index consistent and every checksum right.");
  cmd->add_option("CKPT", *dir,
                  "checkpoint directory, run directory (its latest), Hugging Face directory, "
                  ".safetensors or .pt file")
      ->required();
  return [dir]() -> int {
    if (world_rank() != 0) return 0;
    VerifyReport report = verify_checkpoint(*dir);  // a run directory: its latest
    print_notes(report.notes);
    if (report.problems.empty() && !report.checksums_reason.empty()) {
      std::cout << report.dir << ": OK, " << report.chunks << " tensors, "
                << human_bytes(report.bytes) << ": structure verified (files, offsets, sizes, "
                << "bool values); nothing more to verify: " << report.checksums_reason << "\n";
      return 0;
    }
    if (report.problems.empty()) {
      std::cout << report.dir << ": OK, " << report.chunks << " chunks, "
                << human_bytes(report.bytes) << " verified\n";
      return 0;
    }
    std::cerr << "shardload verify: " << report.dir << ": " << report.problems.size()
              << " problem(s):\n";
    for (const auto& p : report.problems) std::cerr << "  " << p << "\n";
    return 3;
  };
}

}  // namespace shardload::tools
