#include "loader/save.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <map>
#include <memory>
#include <set>

#include "core/crash_point.h"
#include "core/error.h"
#include "io/checksum.h"
#include "io/commit/checkpoint_dir.h"
#include "io/commit/run_dir.h"
#include "io/h5/manifest.h"
#include "io/h5/shard_file.h"
#include "loader/async_save.h"
#include "loader/checkpoint_path.h"
#include "loader/collective.h"
#include "loader/declarations.h"
#include "loader/tensor_bytes.h"
#include "sharding/resolve.h"
#include "shardload/config.h"
#include "transport/communicator.h"

namespace shardload {
namespace {

void check_key(const std::string& key) {
  if (key.empty()) throw UsageError("empty key in the partition");
  if (key.find('\0') != std::string::npos) {
    throw UsageError("key '" + key + "' contains a NUL character");
  }
}

/// The plain values are the job's: the same on every rank. One allgather of their checksums;
/// only when they differ, rank 0's are shared to name the first key that differs.
void check_values_agree(const Communicator& comm, PhaseRunner& phases, const ValueList& values,
                        const std::string& blob) {
  const auto mine = static_cast<int64_t>(checksum(blob.data(), blob.size()));
  const auto all = comm.allgather(mine);
  if (std::all_of(all.begin(), all.end(), [&](int64_t c) { return c == all[0]; })) return;
  std::string first = comm.rank() == 0 ? blob : std::string();
  comm.broadcast(first, 0);
  phases.run("declare", [&] {
    if (mine == all[0]) return;
    const ValueList theirs = decode_values(first, "rank 0's values");
    std::string what = "its plain values differ from rank 0's";
    for (size_t i = 0; i < std::max(values.size(), theirs.size()); ++i) {
      if (i >= values.size()) {
        what = "it has no plain value '" + theirs[i].first + "' where rank 0 has one";
      } else if (i >= theirs.size() || values[i].first != theirs[i].first) {
        what = "plain value '" + values[i].first + "' is not rank 0's key at that place";
      } else if (!(values[i].second == theirs[i].second)) {
        what = "plain value '" + values[i].first + "' is " + values[i].second.repr(80) +
               ", rank 0 has " + theirs[i].second.repr(80);
      } else {
        continue;
      }
      break;
    }
    throw UsageError(what +
                     " (plain values are the job's, the same on every rank; key a "
                     "rank's own values by its rank)");
  });
}

}  // namespace

SaveResult save(const Partition& partition, const std::string& path, MPI_Comm comm,
                const SaveOptions& options) {
  wait_for_save_to(path);
  SaveResult r = detail::save_now(partition, path, comm, options);
  r.blocked_seconds = r.seconds;
  return r;
}

SaveResult detail::save_now(const Partition& partition, const std::string& path, MPI_Comm mpi_comm,
                            const SaveOptions& options) {
  auto start = std::chrono::steady_clock::now();
  Communicator comm(mpi_comm, options.timeout_seconds);
  PhaseRunner phases(comm, "shardload::save(" + path + ")");
  const int rank = comm.rank();
  const int ranks = comm.size();

  // Plan: every rank's declarations, resolved and checked identically everywhere. Ranks with
  // identical layouts (data-parallel replicas) share one declaration and one list of holdings.
  DeclaredLayouts declared;
  RankGroups holdings;
  SavePlan plan;
  std::string value_blob;
  phases.run("declare", [&] {
    std::set<std::string_view> tensor_keys;
    for (const auto& e : partition.entries()) {
      check_key(e.key);
      if (shape_of(e.tensor) != e.declaration.local_shape) {
        throw UsageError("key '" + e.key + "': tensor shape changed since it was added");
      }
      if (!options.values.empty()) tensor_keys.insert(e.key);
    }
    std::set<std::string_view> value_keys;
    for (const auto& [key, value] : options.values) {
      check_key(key);
      if (tensor_keys.count(key)) {
        throw UsageError("key '" + key + "' is both a tensor and a plain value");
      }
      if (!value_keys.insert(key).second) {
        throw UsageError("plain value '" + key + "' is given twice");
      }
    }
    value_blob = encode_values(options.values);
  });
  check_values_agree(comm, phases, options.values, value_blob);
  declared = exchange_encoded_declarations(comm, partition.encoded_declarations(comm.rank()));
  phases.run("plan", [&] {
    holdings = resolve_declarations(declared);
    plan = plan_save(holdings);
  });

  // Keys in state-dict order: rank 0's, then keys first seen on rank 1, and so on (layouts are
  // in the order of their first rank).
  std::map<std::string, int64_t> key_order;
  for (const auto& layout : declared.layouts) {
    for (const auto& d : layout) key_order.emplace(d.key, static_cast<int64_t>(key_order.size()));
  }

  // Target and staging directory: rank 0 takes the path's save lock, puts back a checkpoint a
  // killed save left beside it, removes dead saves' leftovers, checks the target and creates the
  // staging directory; everyone learns its name. From here on, a failure anywhere removes the
  // staging directory and releases the lock; the target is only ever touched by the commit.
  ResolvedCheckpoint written;  // rank 0: the checkpoint directory and the notes
  std::unique_ptr<CheckpointStaging> staging;
  std::string staging_dir;
  auto cleanup_on_failure = [&](const std::string& phase, const std::function<void()>& body) {
    try {
      phases.run(phase, body);
    } catch (...) {
      staging.reset();
      throw;
    }
  };
  cleanup_on_failure("prepare", [&] {
    if (rank != 0) return;
    if (options.keep_last < 0 || (options.keep_last > 0 && options.step < 0)) {
      throw UsageError(path + ": keep_last needs a step and must not be negative");
    }
    written.path = options.step >= 0 ? prepare_run_dir(path, options.step) : path;
    staging = std::make_unique<CheckpointStaging>(written.path, options.overwrite);
    staging_dir = staging->dir();
    written.notes = staging->notes();
  });
  comm.broadcast(staging_dir, 0);

  SaveResult result;
  result.num_shards = ranks;
  int64_t chunks = 0;

  // Each rank writes its own shard file.
  cleanup_on_failure("write", [&] {
    ShardWriter writer(staging_dir + "/" + shard_file_name(rank, ranks), rank, ranks);
    const auto& entries = partition.entries();
    HostBytes host;  // one bounce buffer for non-contiguous and CUDA tensors
    const int64_t to_write = plan.bytes_per_rank[static_cast<size_t>(rank)];
    auto last_report = std::chrono::steady_clock::now();
    for (int32_t i : plan.writes[static_cast<size_t>(rank)]) {
      const PartitionEntry& e = entries[static_cast<size_t>(i)];
      const Holding& h = holdings.of_rank(rank)[static_cast<size_t>(i)];
      ChunkRecord row;
      row.key = e.key;
      row.order = key_order.at(e.key);
      row.dtype = h.dtype;
      row.global_shape = h.global_shape;
      const at::Tensor& t = e.tensor;
      if ((t.device().is_cpu() && t.is_contiguous()) ||
          static_cast<int64_t>(t.nbytes()) <= options.staging_bytes) {
        row.offset = h.region.offset;
        row.shape = h.region.shape;
        writer.add(std::move(row), host.of(t));
        ++chunks;
      } else {
        // Copied to host memory in pieces of at most staging_bytes, each its own chunk.
        for_each_budget_piece(full_box(h.region.shape), static_cast<int64_t>(t.element_size()),
                              std::max<int64_t>(options.staging_bytes, 1), [&](const Box& piece) {
                                ChunkRecord r = row;
                                r.offset = h.region.offset;
                                for (size_t d = 0; d < r.offset.size(); ++d) {
                                  r.offset[d] += piece.offset[d];
                                }
                                r.shape = piece.shape;
                                writer.add(std::move(r), host.of(box_view(t, piece)));
                                ++chunks;
                              });
      }
      if (options.progress &&
          std::chrono::steady_clock::now() - last_report > std::chrono::milliseconds(200)) {
        last_report = std::chrono::steady_clock::now();
        options.progress(Progress{
            "save", "write", static_cast<int64_t>(writer.data_bytes()), to_write,
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()});
      }
    }
    writer.finish();
    result.bytes_written = static_cast<int64_t>(writer.data_bytes());
    crash_point("shard-written", rank);
  });

  // The manifest, last, then the commit that makes the checkpoint visible (the target is checked
  // again there), then, in a run directory, `latest` and the rotation.
  auto chunk_counts = comm.allgather(chunks);
  cleanup_on_failure("commit", [&] {
    if (rank != 0) return;
    Manifest m;
    m.library_version = SHARDLOAD_VERSION_STRING;
    for (int r = 0; r < ranks; ++r) m.shard_files.push_back(shard_file_name(r, ranks));
    m.shard_chunks = chunk_counts;
    m.num_ranks = ranks;
    m.created = utc_timestamp();
    m.metadata = options.metadata;
    m.values = options.values;
    write_manifest(staging_dir, m);
    crash_point("manifest-written", rank);
    staging->commit();
    staging.reset();  // releases the lock
    if (options.step >= 0) {
      for (auto& n : publish_step(path, options.step, options.keep_last)) {
        written.notes.push_back(std::move(n));
      }
    }
  });
  share_from_rank0(written, comm);
  result.path = written.path;
  result.notes = written.notes;

  result.chunks_written = chunks;
  result.bytes_written_total = comm.allreduce_sum(result.bytes_written);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.seconds = comm.allreduce_max(secs);
  return result;
}

}  // namespace shardload
