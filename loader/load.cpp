// The load, phase by phase (DESIGN.md §1): open → index exchange → plan → verdict → transfer →
// result. Each phase ends in a status reduction (PhaseRunner), so a failure anywhere is thrown on
// every rank; the plan is a pure function of data every rank holds identically.
#include "loader/load.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "core/dtype.h"
#include "core/shape.h"
#include "io/checkpoint_source.h"
#include "io/checksum.h"
#include "io/torch_dtype.h"
#include "loader/checkpoint_path.h"
#include "loader/collective.h"
#include "loader/declarations.h"
#include "loader/shard_files.h"
#include "loader/tensor_bytes.h"
#include "loader/transfer/transfer.h"
#include "loader/verdict.h"
#include "sharding/index_check.h"
#include "sharding/resolve.h"
#include "transport/communicator.h"
#include "transport/transport.h"

namespace shardload {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// Applies key filter and prefix mapping; returns whether the key takes part.
class KeyMapper {
 public:
  explicit KeyMapper(const LoadOptions& o) : options_(o) {
    if (!o.key_filter.empty()) {
      try {
        filter_ = std::regex(o.key_filter, std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        throw UsageError("key filter '" + o.key_filter + "': " + e.what());
      }
    }
  }
  std::string checkpoint_to_model(const std::string& key) const {
    const auto& from = options_.checkpoint_prefix;
    if (from.empty() && options_.model_prefix.empty()) return key;
    if (key.compare(0, from.size(), from) != 0) return key;
    return options_.model_prefix + key.substr(from.size());
  }
  bool selected(const std::string& key) const {
    return !filter_ || std::regex_search(key, *filter_);
  }
  bool renames() const {
    return !options_.checkpoint_prefix.empty() || !options_.model_prefix.empty();
  }
  bool filters() const { return filter_.has_value(); }

 private:
  const LoadOptions& options_;
  std::optional<std::regex> filter_;
};

/// PyTorch's backward-compatibility rule (load_state_dict): a checkpoint tensor of shape [1]
/// loads into a 0-d model tensor. Such needs are planned as the [1] tensor they will receive.
void accept_legacy_scalars(const std::vector<ChunkRecord>& index,
                           std::vector<std::vector<Need>>& needs) {
  std::set<std::string> one_element;
  for (const auto& row : index) {
    if (row.global_shape == Shape{1}) one_element.insert(row.key);
  }
  if (one_element.empty()) return;
  for (auto& rank_needs : needs) {
    for (auto& n : rank_needs) {
      if (n.global_shape.empty() && one_element.count(n.key)) {
        n.global_shape = {1};
        n.region = Box{{0}, {1}};
      }
    }
  }
}

/// A checksum of this rank's LoadOptions::value_keys and deferred_prefixes, gathered from every
/// rank before the plan (match_values() checks that they agree: the verdict must be the same
/// everywhere).
std::vector<int64_t> gather_value_keys(const LoadOptions& options, const Communicator& comm) {
  std::string joined;
  for (const auto& k : options.value_keys) joined += k + '\0';
  joined += '\1';
  for (const auto& k : options.deferred_prefixes) joined += k + '\0';
  joined += '\1';
  for (const auto& k : options.read_prefixes) joined += k + '\0';
  return comm.allgather(static_cast<int64_t>(checksum(joined.data(), joined.size())));
}

/// LoadOptions::message_bytes, or (0) the size for where the tensors are: kDeviceMessageBytes
/// when any rank's tensor is on a device, else kHostMessageBytes. The same on every rank (one
/// reduction, made whatever the option says, so that ranks never disagree on calling it).
int64_t resolve_message_bytes(const LoadOptions& options, const Partition& partition,
                              const Communicator& comm) {
  int64_t device = 0;
  for (const PartitionEntry& e : partition.entries()) {
    if (e.tensor.defined() && !e.tensor.device().is_cpu()) device = 1;
  }
  if (comm.size() > 1) device = comm.allreduce_max(device);
  if (options.message_bytes != 0) return options.message_bytes;
  return device ? kDeviceMessageBytes : kHostMessageBytes;
}

bool under_any(const std::string& key, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes) {
    if (key.compare(0, p.size(), p) == 0) return true;
  }
  return false;
}

/// A value that annotates the state rather than being part of it (a module's `_metadata`,
/// docs/FORMAT.md): loaded when asked for, never missing or unexpected.
bool is_annotation(const std::string& key) {
  static const std::string name = "__metadata__";
  if (key.size() < name.size() || key.compare(key.size() - name.size(), name.size(), name) != 0) {
    return false;
  }
  return key.size() == name.size() || key[key.size() - name.size() - 1] == '.';
}

/// LoadOptions::read_prefixes: the checkpoint's tensors under them that the partition does
/// not declare, allocated whole at the checkpoint's shape and dtype and declared replicated (so
/// the plan reads them like any other). Only a tensor whose chunks cover it is allocated (the
/// validated index's chunks do not overlap and lie in their files, so a file cannot make a load
/// allocate more than its own size); one they do not cover is a FormatError naming it. Returns
/// the entries added, in the checkpoint's key order.
TensorList add_deferred(const std::vector<ChunkRecord>& index,
                        const std::vector<std::string>& file_names, const LoadOptions& options,
                        Partition& partition) {
  TensorList added;
  if (options.read_prefixes.empty()) return added;
  KeyMapper mapper(options);
  std::set<std::string> declared;
  for (const auto& e : partition.entries()) declared.insert(e.key);
  std::map<std::string, uint64_t> covered;  // bytes of each deferred key's chunks
  std::vector<const ChunkRecord*> first;    // each deferred key's first row, in index order
  for (const auto& row : index) {
    std::string key = mapper.checkpoint_to_model(row.key);
    if (!mapper.selected(key) || !under_any(key, options.read_prefixes) ||
        !under_any(key, options.deferred_prefixes) || declared.count(key)) {
      continue;
    }
    auto [it, fresh] = covered.try_emplace(std::move(key), 0);
    it->second += row.nbytes;
    if (fresh) first.push_back(&row);
  }
  for (const ChunkRecord* row : first) {
    std::string key = mapper.checkpoint_to_model(row->key);
    const uint64_t whole =
        static_cast<uint64_t>(byte_size(row->global_shape, dtype_size(row->dtype)));
    if (covered.at(key) != whole) {
      throw FormatError("In " + file_names[static_cast<size_t>(row->file)] + ": tensor '" +
                        row->key + "' of shape " + shape_str(row->global_shape) +
                        " has chunks for " + std::to_string(covered.at(key)) + " of its " +
                        std::to_string(whole) +
                        " bytes; the module that loads it itself needs it whole");
    }
    std::vector<int64_t> sizes(row->global_shape.begin(), row->global_shape.end());
    at::Tensor t = at::empty(sizes, at::TensorOptions().dtype(scalar_type_of(row->dtype)));
    partition.add(key, t);
    added.push_back({std::move(key), std::move(t)});
  }
  return added;
}

/// Keys under LoadOptions::deferred_prefixes leave the verdict: the caller judges them.
void defer_keys(const LoadOptions& options, LoadPlan& plan, LoadResult& result) {
  if (options.deferred_prefixes.empty()) return;
  auto keep = [&](std::vector<std::string>& keys, std::vector<std::string>* moved) {
    std::erase_if(keys, [&](const std::string& k) {
      if (!under_any(k, options.deferred_prefixes)) return false;
      if (moved) moved->push_back(k);
      return true;
    });
  };
  keep(plan.missing_keys, &result.deferred_missing);
  keep(plan.unexpected_keys, &result.deferred_unexpected);
}

/// The plain values of the verdict (LoadOptions::value_keys against the manifest's values):
/// missing and unexpected keys join the plan's, after its tensors' keys; the values asked for
/// and found go to `result`. Pure; runs inside the plan phase. `all`: gather_value_keys().
void match_values(const Manifest& manifest, const LoadOptions& options,
                  const std::vector<int64_t>& all, LoadPlan& plan, LoadResult& result) {
  for (size_t r = 0; r < all.size(); ++r) {
    if (all[r] != all[0]) {
      throw UsageError("ranks 0 and " + std::to_string(r) +
                       " hold different plain values (value_keys); every rank's state must "
                       "have the same ones");
    }
  }
  KeyMapper mapper(options);
  std::map<std::string, const Value*> stored;
  for (const auto& [key, value] : manifest.values) {
    std::string mapped = mapper.checkpoint_to_model(key);
    if (mapper.selected(mapped)) stored.emplace(std::move(mapped), &value);
  }
  std::set<std::string> asked;
  for (const auto& key : options.value_keys) {
    if (!mapper.selected(key) || !asked.insert(key).second) continue;
    auto it = stored.find(key);
    if (it == stored.end()) {
      if (!is_annotation(key) && !under_any(key, options.deferred_prefixes)) {
        plan.missing_keys.push_back(key);
      }
      continue;
    }
    if (it->second->holds_pickle() && !options.allow_pickle) {
      throw UsageError("value '" + key +
                       "' was saved pickled; loading it runs code from the "
                       "checkpoint, so it needs allow_pickle=True (LoadOptions::allow_pickle)");
    }
    result.values.emplace_back(key, *it->second);
  }
  for (const auto& [key, value] : manifest.values) {
    std::string mapped = mapper.checkpoint_to_model(key);
    if (!mapper.selected(mapped) || asked.count(mapped) || is_annotation(mapped)) continue;
    if (under_any(mapped, options.deferred_prefixes)) {
      // The caller's module judges it; a pickled one without allow_pickle only by its name.
      if (!value.holds_pickle() || options.allow_pickle) {
        result.values.emplace_back(mapped, value);
      } else {
        result.deferred_unexpected.push_back(mapped);
      }
      continue;
    }
    plan.unexpected_keys.push_back(mapped);
  }
}

}  // namespace

LoadResult load(Partition& partition, const std::string& checkpoint, MPI_Comm mpi_comm,
                const LoadOptions& options) {
  const auto load_start = Clock::now();
  Communicator comm(mpi_comm, options.timeout_seconds);
  // A run directory's `latest`; a checkpoint that a killed save left beside its path.
  ResolvedCheckpoint resolved = resolve_checkpoint(checkpoint, comm);
  const std::string& path = resolved.path;
  PhaseRunner phases(comm, "shardload::load(" + path + ")");
  const int rank = comm.rank();
  const int ranks = comm.size();
  LoadResult result;
  result.notes = std::move(resolved.notes);
  // The entries add_deferred() declares are the load's, not the caller's partition's.
  struct DeferredEntries {
    Partition& partition;
    size_t caller_entries;
    ~DeferredEntries() {
      auto& e = partition.entries();
      e.erase(e.begin() + static_cast<std::ptrdiff_t>(caller_entries), e.end());
    }
  } deferred_entries{partition, partition.entries().size()};
  auto t = Clock::now();

  // 1. Open: rank 0 finds what the path is (a shardload checkpoint's manifest, a Hugging Face
  //    index, one .safetensors or .pt file) and shares the listing; rank r opens files r, r+P,
  //    ... with the reader of their format and reads their index rows (a shard file's index
  //    table, a .safetensors header, a .pt file's pickle). No rank reads every file's index.
  CheckpointSource source;
  std::string source_bytes;
  phases.run("open", [&] {
    if (rank == 0) {
      source = find_checkpoint_source(path, options.select);
      source_bytes = serialize_checkpoint_source(source);
    }
  });
  comm.broadcast(source_bytes, 0);
  if (rank != 0) source = deserialize_checkpoint_source(source_bytes);
  const Manifest& manifest = source.manifest;
  ShardFiles files(source, options.direct_io);
  std::vector<ChunkRecord> my_rows;
  std::string file_notes;  // what rank 0's reader of a .pt file selected, one per line
  phases.run("open", [&] {
    for (int32_t f = rank; f < static_cast<int32_t>(manifest.shard_files.size()); f += ranks) {
      const ChunkReader& reader = files.get(f);
      auto rows = reader.read_index(f);
      if (!manifest.shard_chunks.empty() &&
          static_cast<int64_t>(rows.size()) != manifest.shard_chunks[static_cast<size_t>(f)]) {
        throw FormatError("In " + files.path(f) + ": index has " + std::to_string(rows.size()) +
                          " rows, the manifest says " +
                          std::to_string(manifest.shard_chunks[static_cast<size_t>(f)]));
      }
      for (const auto& note : reader.notes()) file_notes += note + '\n';
      my_rows.insert(my_rows.end(), std::make_move_iterator(rows.begin()),
                     std::make_move_iterator(rows.end()));
    }
  });
  if (source.format == SourceFormat::kTorch) {
    // One file, read by rank 0: its notes (what --select took and left) for every rank.
    comm.broadcast(file_notes, 0);
    for (size_t at = 0, end; (end = file_notes.find('\n', at)) != std::string::npos; at = end + 1) {
      result.notes.push_back(file_notes.substr(at, end - at));
    }
  }
  result.seconds.open = seconds_since(t);

  // 2. Index exchange: one allgather; every rank then holds the same global index, in file order.
  t = Clock::now();
  phases.enter("index");
  auto gathered = comm.allgather(serialize_records(my_rows));
  std::vector<ChunkRecord> index;
  phases.run("index", [&] {
    for (const auto& bytes : gathered) deserialize_records(bytes, index);
    // The saved state dict's key order, whatever the number of ranks that read the indexes.
    sort_by_saved_order(index);
    // A Hugging Face index against the shards' headers: rank 0 holds the weight map.
    if (rank == 0) check_weight_map(source, index);
  });
  phases.run("index", [&] {
    std::vector<std::string> names;
    for (int32_t f = 0; f < static_cast<int32_t>(manifest.shard_files.size()); ++f) {
      names.push_back(files.path(f));
    }
    validate_index(index, names);
    result.deferred = add_deferred(index, names, options, partition);
  });
  gathered.clear();
  result.seconds.index = seconds_since(t);

  // 3. Plan: all partitions, the same key mapping everywhere, then the pure planner.
  t = Clock::now();
  phases.enter("plan");
  // Ranks with identical layouts (data-parallel replicas) share one declaration in the exchange
  // and one list of needs in the plan.
  auto declared = exchange_encoded_declarations(comm, partition.encoded_declarations(rank));
  const std::vector<int64_t> value_keys = gather_value_keys(options, comm);
  const int64_t message_bytes = resolve_message_bytes(options, partition, comm);
  RankGroups needs;
  std::vector<int32_t> my_entry_of_need;  // need index on this rank -> partition entry
  LoadPlan plan;
  phases.run("plan", [&] {
    KeyMapper mapper(options);
    // Splits over all ranks stay symbolic: FSDP's thousands of ranks are a few groups.
    needs = resolve_declarations(declared, /*symbolic_splits=*/true);
    declared = {};
    const auto my_group = static_cast<size_t>(needs.group_of[static_cast<size_t>(rank)]);
    for (size_t g = 0; g < needs.lists.size(); ++g) {
      auto& list = needs.lists[g];
      size_t kept = 0;
      for (size_t i = 0; i < list.size(); ++i) {
        if (!mapper.selected(list[i].key)) continue;
        if (g == my_group) my_entry_of_need.push_back(static_cast<int32_t>(i));
        if (kept != i) list[kept] = std::move(list[i]);
        ++kept;
      }
      list.resize(kept);
    }
    // Renamed and filtered in place (no prefix and no filter: nothing to do).
    if (mapper.renames() || mapper.filters()) {
      size_t kept = 0;
      for (size_t i = 0; i < index.size(); ++i) {
        ChunkRecord& row = index[i];
        row.key = mapper.checkpoint_to_model(row.key);
        if (!mapper.selected(row.key)) continue;
        if (kept != i) index[kept] = std::move(row);
        ++kept;
      }
      index.resize(kept);
    }
    accept_legacy_scalars(index, needs.lists);
    // This rank's share of the plan: what it reads, sends and receives (and the whole verdict).
    plan = plan_load_for_rank(index, needs, rank, PlanOptions{message_bytes});
    match_values(manifest, options, value_keys, plan, result);
    defer_keys(options, plan, result);
  });
  result.seconds.plan = seconds_since(t);
  // What the transfer needs of the plan phase: this rank's needs, and the partition entry each
  // lands in.
  const std::vector<Need> my_needs = needs.concrete_list(rank);

  // 4. Verdict: decided from the plan alone, identically on every rank, before any tensor byte
  //    is read or written.
  t = Clock::now();
  decide_verdict(plan, options, result);
  result.seconds.verdict = seconds_since(t);
  if (!result.ok) {
    result.wall_seconds = seconds_since(load_start);
    throw LoadVerdictError(std::move(result));
  }

  // 5. Transfer (loader/transfer.*): readers read their pieces, every byte verified, into
  //    staging buffers; the transport delivers them to the other receivers; receivers copy
  //    (converting dtype) into their tensors. Reads overlap deliveries within a staging budget.
  //    Everything that can fail alone (allocation, opening files, transport set-up) happens
  //    first, in its own phase; once messages move, every rank runs to the end of the plan and
  //    a failed read is flagged in the message (receivers skip it) and reduced at the end.
  t = Clock::now();
  std::unique_ptr<Transfer> transfer;
  phases.run("transfer", [&] {
    transfer = std::make_unique<Transfer>(TransferInputs{
        plan, index, my_needs, my_entry_of_need, partition, files,
        TransferOptions{message_bytes, options.staging_bytes, options.verify_checksums,
                        options.reader_threads, options.progress, options.read_in_place},
        comm});
  });
  transfer->connect(phases);
  TransferOutcome moved = transfer->run();
  transfer.reset();
  phases.reduce("transfer", moved.failed, moved.error);
  result.bytes_read = moved.bytes_read;
  result.transport = moved.transport;
  result.transport_reason = moved.transport_note;
  result.staging_bytes_peak = moved.staging_peak;
  result.message_bytes = message_bytes;
  result.seconds.transfer = seconds_since(t);

  // 6. Result: the figures every rank reports.
  t = Clock::now();
  phases.enter("result");
  result.bytes_read_total = comm.allreduce_sum(result.bytes_read);
  // Every piece is read by one rank: the pieces each rank reads add up to the whole plan's.
  result.bytes_needed_total = comm.allreduce_sum(plan.read_bytes[static_cast<size_t>(rank)]);
  result.seconds.result = seconds_since(t);
  result.wall_seconds = comm.allreduce_max(seconds_since(load_start));
  result.format = std::string(source_format_name(source.format));
  result.checksums_verified = options.verify_checksums && source.has_checksums();
  result.checksums_reason = !source.has_checksums()     ? source.missing_checksums_reason()
                            : !options.verify_checksums ? "turned off (verify_checksums=false)"
                                                        : "";
  if (options.progress) {
    options.progress(Progress{"load", "result", result.bytes_read_total, result.bytes_needed_total,
                              result.wall_seconds, /*finished=*/true});
  }
  return result;
}

LoadResult load(torch::nn::Module& module, const std::string& path, MPI_Comm comm,
                const LoadOptions& options, const std::vector<SplitRule>& rules) {
  Partition partition = Partition::from_module(module, rules);
  return load(partition, path, comm, options);
}

}  // namespace shardload
