#include "loader/save.h"

#include <chrono>
#include <ctime>
#include <map>

#include "core/error.h"
#include "io/checkpoint_dir.h"
#include "io/manifest.h"
#include "io/shard_file.h"
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

}  // namespace

SaveResult save(const Partition& partition, const std::string& path, MPI_Comm mpi_comm,
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
  phases.run("declare", [&] {
    for (const auto& e : partition.entries()) {
      check_key(e.key);
      if (shape_of(e.tensor) != e.declaration.local_shape) {
        throw UsageError("key '" + e.key + "': tensor shape changed since it was added");
      }
    }
  });
  declared = exchange_declarations(comm, partition.declarations());
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

  // Target and staging directory: rank 0 decides, everyone learns the name. From here on, a
  // failure anywhere removes the staging directory; the target is only ever touched by the
  // final rename.
  std::string staging;
  auto cleanup_on_failure = [&](const std::string& phase, const std::function<void()>& body) {
    try {
      phases.run(phase, body);
    } catch (...) {
      if (rank == 0 && !staging.empty()) remove_tree_noexcept(staging);
      throw;
    }
  };
  cleanup_on_failure("prepare", [&] {
    if (rank == 0) {
      check_save_target(path, options.overwrite);
      staging = make_staging_dir(path);
    }
  });
  comm.broadcast(staging, 0);

  SaveResult result;
  result.num_shards = ranks;
  int64_t chunks = 0;

  // Each rank writes its own shard file.
  cleanup_on_failure("write", [&] {
    ShardWriter writer(staging + "/" + shard_file_name(rank, ranks), rank, ranks);
    const auto& entries = partition.entries();
    for (int32_t i : plan.writes[static_cast<size_t>(rank)]) {
      const PartitionEntry& e = entries[static_cast<size_t>(i)];
      const Holding& h = holdings.of_rank(rank)[static_cast<size_t>(i)];
      at::Tensor bytes = host_contiguous(e.tensor);
      ChunkRecord row;
      row.key = e.key;
      row.order = key_order.at(e.key);
      row.dtype = h.dtype;
      row.global_shape = h.global_shape;
      row.offset = h.region.offset;
      row.shape = h.region.shape;
      writer.add(std::move(row), bytes.data_ptr());
      ++chunks;
    }
    writer.finish();
    result.bytes_written = static_cast<int64_t>(writer.data_bytes());
  });

  // The manifest, last, then the rename that makes the checkpoint visible.
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
    write_manifest(staging, m);
    commit_staging_dir(staging, path);
  });

  result.chunks_written = chunks;
  result.bytes_written_total = comm.allreduce_sum(result.bytes_written);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  result.seconds = comm.allreduce_max(secs);
  return result;
}

}  // namespace shardload
