#include "loader/checkpoint_info.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <numeric>
#include <set>

#include "core/crash_point.h"
#include "core/error.h"
#include "io/commit/checkpoint_dir.h"
#include "io/commit/run_dir.h"
#include "io/h5/shard_file.h"
#include "loader/shard_files.h"
#include "loader/tensor_bytes.h"
#include "sharding/box.h"
#include "sharding/load_plan.h"
#include "shardload/config.h"

namespace shardload {
namespace {

std::vector<std::string> file_paths(const CheckpointSource& source) {
  std::vector<std::string> out;
  for (int32_t f = 0; f < static_cast<int32_t>(source.manifest.shard_files.size()); ++f) {
    out.push_back(source.file_path(f));
  }
  return out;
}

/// The index of a checkpoint whose files `files` opens; fills `info` but for its resolution.
void read_index(ShardFiles& files, CheckpointInfo& info) {
  const CheckpointSource& source = files.source();
  info.manifest = source.manifest;
  for (int32_t f = 0; f < static_cast<int32_t>(source.manifest.shard_files.size()); ++f) {
    const ChunkReader& reader = files.get(f);
    auto rows = reader.read_index(f);
    auto notes = reader.notes();
    info.notes.insert(info.notes.end(), notes.begin(), notes.end());
    info.index.insert(info.index.end(), rows.begin(), rows.end());
  }
  check_weight_map(source, info.index);
  validate_index(info.index, file_paths(source));
  std::stable_sort(info.index.begin(), info.index.end(),
                   [](const ChunkRecord& a, const ChunkRecord& b) { return a.order < b.order; });
}

uint64_t file_size_or_zero(const std::string& path) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(path, ec);
  return ec ? 0 : static_cast<uint64_t>(n);
}

}  // namespace

CheckpointInfo read_checkpoint_info(const std::string& path, const std::string& select) {
  CheckpointInfo info;
  ResolvedCheckpoint where = resolve_checkpoint(path);  // a run directory's latest; a restore
  info.dir = where.path;
  info.notes = std::move(where.notes);
  info.source = find_checkpoint_source(info.dir, select);
  ShardFiles files(info.source);
  read_index(files, info);
  return info;
}

VerifyReport verify_checkpoint(const std::string& path) {
  VerifyReport report;
  ResolvedCheckpoint where = resolve_checkpoint(path);  // a run directory's latest; a restore
  report.dir = where.path;
  report.notes = std::move(where.notes);
  const CheckpointSource source = find_checkpoint_source(report.dir);
  report.checksums_reason = source.missing_checksums_reason();
  const Manifest& manifest = source.manifest;
  auto paths = file_paths(source);
  std::vector<ChunkRecord> index;
  ShardFiles files(source);
  for (size_t f = 0; f < paths.size(); ++f) {
    try {
      const ChunkReader& reader = files.get(static_cast<int32_t>(f));
      auto rows = reader.read_index(static_cast<int32_t>(f));
      if (!manifest.shard_chunks.empty() &&
          static_cast<int64_t>(rows.size()) != manifest.shard_chunks[f]) {
        report.problems.push_back("In " + paths[f] + ": index has " + std::to_string(rows.size()) +
                                  " rows, the manifest says " +
                                  std::to_string(manifest.shard_chunks[f]));
      }
      for (const auto& row : rows) {
        // Bounded memory whatever the chunk's size: the chunk streams through a window.
        try {
          reader.verify_chunk(row);
          ++report.chunks;
          report.bytes += static_cast<int64_t>(row.nbytes);
        } catch (const std::exception& e) {
          report.problems.push_back(e.what());
        }
      }
      index.insert(index.end(), rows.begin(), rows.end());
    } catch (const std::exception& e) {
      report.problems.push_back(e.what());
    }
  }
  try {
    check_weight_map(source, index);
  } catch (const std::exception& e) {
    report.problems.push_back(e.what());
  }
  try {
    validate_index(index, paths);
  } catch (const std::exception& e) {
    report.problems.push_back(e.what());
  }
  return report;
}

TensorList read_checkpoint(const std::string& path, const std::string& select) {
  CheckpointInfo info;
  ResolvedCheckpoint where = resolve_checkpoint(path);  // a run directory's latest; a restore
  info.dir = where.path;
  info.source = find_checkpoint_source(info.dir, select);
  ShardFiles files(info.source);
  read_index(files, info);
  // Before anything is allocated from the index's shapes: every chunk's bytes lie in its file
  // (prepare), and the chunks of each key cover it. validate_index rules out overlaps, so
  // counting elements proves coverage, and a tensor is never larger than its stored chunks.
  std::map<std::string, std::pair<int64_t, int64_t>> counts;  // key -> (covered, numel)
  uint64_t total = 0;
  for (const auto& row : info.index) {
    files.get(row.file).prepare(row);
    auto& [covered, numel_all] =
        counts.try_emplace(row.key, 0, numel(row.global_shape)).first->second;
    covered = checked_add(covered, numel(row.shape), "covered elements");
    total = checked_add(total, row.nbytes, "bytes");
  }
  for (const auto& [key, c] : counts) {
    if (c.first != c.second) {
      throw FormatError("In " + info.dir + ": key '" + key +
                        "': the stored chunks do not cover the whole tensor");
    }
  }
  if (!info.source.has_checksums()) {
    // A .pt file's views (stride-0 expansions) may declare more bytes than the file holds.
    uint64_t budget = uint64_t{1} << 30;
    for (const auto& p : file_paths(info.source)) budget += file_size_or_zero(p);
    if (total > budget) {
      throw FormatError("In " + info.dir + ": its tensors would take " + std::to_string(total) +
                        " bytes, far more than its files hold (views expanded with stride 0?)");
    }
  }
  TensorList out;
  std::map<std::string, size_t> slot;
  for (const auto& row : info.index) {
    auto [it, fresh] = slot.emplace(row.key, out.size());
    const auto options = at::TensorOptions().dtype(scalar_type_of(row.dtype));
    if (fresh) out.push_back({row.key, at::empty(row.global_shape, options)});
    at::Tensor view = box_view(out[it->second].tensor, Box{row.offset, row.shape});
    // The output tensors are fresh and dropped on any error: they may serve as staging.
    const ChunkReader& reader = files.get(row.file);
    if (view.is_contiguous()) {
      reader.read_chunk(row, view.data_ptr(), true);
    } else {
      at::Tensor chunk = at::empty(row.shape, options);
      reader.read_chunk(row, chunk.data_ptr(), true);
      view.copy_(chunk);
    }
  }
  return out;
}

std::vector<std::string> write_checkpoint(
    const std::string& dir, const TensorList& tensors, int num_shards, bool overwrite,
    const std::vector<std::pair<std::string, std::string>>& metadata) {
  if (num_shards < 1) throw UsageError("--shards must be at least 1");
  {
    std::set<std::string> seen;
    for (const auto& t : tensors) {
      if (!seen.insert(t.key).second) throw UsageError("key '" + t.key + "' appears twice");
    }
  }
  check_save_target(dir, overwrite);
  // Largest tensors first, each to the lightest shard; each shard keeps state-dict order.
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return tensors[a].tensor.nbytes() > tensors[b].tensor.nbytes();
  });
  std::vector<std::vector<size_t>> shard_of(static_cast<size_t>(num_shards));
  std::vector<int64_t> load(static_cast<size_t>(num_shards), 0);
  for (size_t i : order) {
    size_t s = static_cast<size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    shard_of[s].push_back(i);
    load[s] += static_cast<int64_t>(tensors[i].tensor.nbytes());
  }
  CheckpointStaging staging(dir, overwrite);
  {
    Manifest m;
    m.library_version = SHARDLOAD_VERSION_STRING;
    m.num_ranks = 1;
    m.metadata = metadata;
    for (int s = 0; s < num_shards; ++s) {
      auto& members = shard_of[static_cast<size_t>(s)];
      std::sort(members.begin(), members.end());
      std::string name = shard_file_name(s, num_shards);
      ShardWriter writer(staging.dir() + "/" + name, s, num_shards);
      for (size_t i : members) {
        const auto& [key, tensor] = tensors[i];
        at::Tensor bytes = host_contiguous(tensor);
        ChunkRecord row;
        row.key = key;
        row.order = static_cast<int64_t>(i);
        row.dtype = dtype_of(tensor, key);
        row.global_shape = shape_of(tensor);
        row.offset.assign(row.global_shape.size(), 0);
        row.shape = row.global_shape;
        writer.add(std::move(row), bytes.data_ptr());
      }
      writer.finish();
      crash_point("shard-written", s);
      m.shard_files.push_back(name);
      m.shard_chunks.push_back(static_cast<int64_t>(members.size()));
    }
    m.created = utc_timestamp();
    write_manifest(staging.dir(), m);
    crash_point("manifest-written");
    staging.commit();
  }
  return staging.notes();
}

}  // namespace shardload
