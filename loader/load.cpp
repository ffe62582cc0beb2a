// The load, phase by phase (DESIGN.md §1): open → index exchange → plan → verdict → transfer →
// result. Each phase ends in a status reduction (PhaseRunner), so a failure anywhere is thrown on
// every rank; the plan is a pure function of data every rank holds identically.
#include "loader/load.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <chrono>
#include <deque>
#include <map>
#include <optional>
#include <regex>
#include <set>

#include "io/manifest.h"
#include "io/shard_file.h"
#include "loader/checkpoint_path.h"
#include "loader/collective.h"
#include "loader/declarations.h"
#include "loader/tensor_bytes.h"
#include "loader/verdict.h"
#include "transport/communicator.h"
#include "transport/transport.h"

namespace shardload {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

/// Opens shard files on first use and keeps them open for the rest of the load.
class ShardFiles {
 public:
  ShardFiles(std::string dir, const Manifest& manifest)
      : dir_(std::move(dir)), manifest_(manifest) {}
  const ShardReader& get(int32_t file) {
    auto it = open_.find(file);
    if (it != open_.end()) return it->second;
    if (file < 0 || file >= static_cast<int32_t>(manifest_.shard_files.size())) {
      throw FormatError("In " + dir_ + ": index refers to shard file #" + std::to_string(file) +
                        ", the manifest lists " + std::to_string(manifest_.shard_files.size()));
    }
    return open_.emplace(file, ShardReader(path(file))).first->second;
  }
  std::string path(int32_t file) const { return dir_ + "/" + manifest_.shard_files[file]; }

 private:
  std::string dir_;
  const Manifest& manifest_;
  std::map<int32_t, ShardReader> open_;
};

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

/// The destination of one piece on this rank: the part of the local tensor its box covers.
at::Tensor destination_view(const PartitionEntry& entry, const Need& need, const Box& box) {
  at::Tensor view = entry.tensor;
  if (view.dim() == 0) return view;  // a 0-d tensor (also when loaded from a [1] tensor)
  for (size_t d = 0; d < box.shape.size(); ++d) {
    view =
        view.narrow(static_cast<int64_t>(d), box.offset[d] - need.region.offset[d], box.shape[d]);
  }
  return view;
}

/// A message in flight on this rank: its staging buffer (an 8-byte status word, then the
/// pieces' bytes) and the delivery moving it.
struct InFlight {
  const Message* message;
  int64_t offset;  ///< of its buffer in the staging arena
  std::unique_ptr<Delivery> delivery;
  bool landed = false;  ///< the bytes were received straight into the destination tensor
};

constexpr int64_t kDirectBytes = int64_t{1} << 20;

/// Large single-piece messages go in two steps, the reader's status first (8 bytes), then the
/// data — only when the read succeeded — so that a receiver can take the data straight into its
/// tensor without staging it. Decided from the plan alone, so all ranks of a message agree.
bool two_step(const LoadPlan& plan, const Message& m) {
  return m.pieces.size() == 1 && plan.ranks_of(m).size() > 1 && m.nbytes >= kDirectBytes;
}

constexpr int64_t kHeader = 8;

/// Staging memory allocated once per load and handed out first-in first-out, as a ring: a
/// message's buffer is a contiguous range; allocate() fails (nullopt) until the oldest buffers
/// are released.
class StagingArena {
 public:
  explicit StagingArena(int64_t capacity)
      : memory_(at::empty({std::max<int64_t>(capacity, 1)}, at::TensorOptions().dtype(at::kByte))),
        capacity_(capacity) {}
  char* data() { return static_cast<char*>(memory_.data_ptr()); }
  std::optional<int64_t> allocate(int64_t size) {
    int64_t start = live_.empty() ? 0 : live_.back().first + live_.back().second;
    if (start + size > capacity_) start = 0;
    for (const auto& [off, len] : live_) {
      if (start < off + len && off < start + size) return std::nullopt;
    }
    live_.emplace_back(start, size);
    return start;
  }
  void release(int64_t offset) {
    if (!live_.empty() && live_.front().first == offset) live_.pop_front();
  }

 private:
  at::Tensor memory_;
  int64_t capacity_;
  std::deque<std::pair<int64_t, int64_t>> live_;
};

}  // namespace

LoadResult load(Partition& partition, const std::string& checkpoint, MPI_Comm mpi_comm,
                const LoadOptions& options) {
  const auto load_start = Clock::now();
  Communicator comm(mpi_comm);
  // A run directory's `latest`; a checkpoint that a killed save left beside its path.
  ResolvedCheckpoint resolved = resolve_checkpoint(checkpoint, comm);
  const std::string& path = resolved.path;
  PhaseRunner phases(comm, "shardload::load(" + path + ")");
  const int rank = comm.rank();
  const int ranks = comm.size();
  LoadResult result;
  result.notes = std::move(resolved.notes);
  auto t = Clock::now();

  // 1. Open: rank 0 reads the manifest and shares it; rank r opens shard files r, r+P, ... and
  //    reads their index tables. No rank reads every file's index.
  Manifest manifest;
  std::string manifest_bytes;
  phases.run("open", [&] {
    if (rank == 0) manifest_bytes = serialize_manifest(read_manifest(path));
  });
  comm.broadcast(manifest_bytes, 0);
  manifest = deserialize_manifest(manifest_bytes);
  ShardFiles files(path, manifest);
  std::vector<ChunkRecord> my_rows;
  phases.run("open", [&] {
    for (int32_t f = rank; f < static_cast<int32_t>(manifest.shard_files.size()); f += ranks) {
      auto rows = files.get(f).read_index(f);
      if (!manifest.shard_chunks.empty() &&
          static_cast<int64_t>(rows.size()) != manifest.shard_chunks[static_cast<size_t>(f)]) {
        throw FormatError("In " + files.path(f) + ": index has " + std::to_string(rows.size()) +
                          " rows, the manifest says " +
                          std::to_string(manifest.shard_chunks[static_cast<size_t>(f)]));
      }
      my_rows.insert(my_rows.end(), std::make_move_iterator(rows.begin()),
                     std::make_move_iterator(rows.end()));
    }
  });
  result.seconds.open = seconds_since(t);

  // 2. Index exchange: one allgather; every rank then holds the same global index, in file order.
  t = Clock::now();
  auto gathered = comm.allgather(serialize_records(my_rows));
  std::vector<ChunkRecord> index;
  phases.run("index", [&] {
    for (const auto& bytes : gathered) deserialize_records(bytes, index);
    // The saved state dict's key order, whatever the number of ranks that read the indexes.
    std::stable_sort(index.begin(), index.end(), [](const ChunkRecord& a, const ChunkRecord& b) {
      return a.order != b.order ? a.order < b.order : a.file < b.file;
    });
    std::vector<std::string> names;
    for (const auto& f : manifest.shard_files) names.push_back(path + "/" + f);
    validate_index(index, names);
  });
  gathered.clear();
  result.seconds.index = seconds_since(t);

  // 3. Plan: all partitions, the same key mapping everywhere, then the pure planner.
  t = Clock::now();
  auto declarations = exchange_declarations(comm, partition.declarations());
  std::vector<std::vector<Need>> needs;
  std::vector<int32_t> my_entry_of_need;  // need index on this rank -> partition entry
  LoadPlan plan;
  phases.run("plan", [&] {
    KeyMapper mapper(options);
    auto holdings = resolve_declarations(declarations);
    needs.resize(holdings.size());
    for (size_t r = 0; r < holdings.size(); ++r) {
      for (size_t i = 0; i < holdings[r].size(); ++i) {
        if (!mapper.selected(holdings[r][i].key)) continue;
        needs[r].push_back(std::move(holdings[r][i]));
        if (static_cast<int>(r) == rank) my_entry_of_need.push_back(static_cast<int32_t>(i));
      }
    }
    std::vector<ChunkRecord> mapped;
    mapped.reserve(index.size());
    for (auto& row : index) {
      row.key = mapper.checkpoint_to_model(row.key);
      if (mapper.selected(row.key)) mapped.push_back(std::move(row));
    }
    index = std::move(mapped);
    accept_legacy_scalars(index, needs);
    plan = plan_load(index, needs, PlanOptions{options.message_bytes});
  });
  result.seconds.plan = seconds_since(t);
  // What the transfer needs of the plan phase: this rank's needs, and the partition entry each
  // lands in.
  const std::vector<Need>& my_needs = needs[static_cast<size_t>(rank)];

  // 4. Verdict: decided from the plan alone, identically on every rank, before any tensor byte
  //    is read or written.
  t = Clock::now();
  decide_verdict(plan, options, result);
  result.seconds.verdict = seconds_since(t);
  if (!result.ok) {
    result.wall_seconds = seconds_since(load_start);
    throw LoadVerdictError(std::move(result));
  }

  // 5. Transfer: readers read their pieces into a staging buffer, the transport delivers it to
  //    the other receivers, receivers copy (converting dtype) into their tensors. Messages stay
  //    in flight while later ones are read, within a fixed staging arena.
  //    Everything that can fail alone (allocation, opening files) happens first, in its own
  //    phase; once messages move, every rank runs to the end of the plan and a failed read is
  //    flagged in the message (receivers skip it) and reported in the final reduction.
  t = Clock::now();
  std::vector<const Message*> mine;
  for (const Message& m : plan.messages) {
    auto ranks_of_m = plan.ranks_of(m);
    if (std::binary_search(ranks_of_m.begin(), ranks_of_m.end(), rank)) mine.push_back(&m);
  }
  std::vector<std::unique_ptr<Transport>> transports;
  std::optional<StagingArena> arena;
  phases.run("transfer", [&] {
    transports = make_transports(comm, /*want_cuda=*/false);
    int64_t largest = 0, total = 0;
    for (const Message* m : mine) {
      largest = std::max(largest, kHeader + m->nbytes);
      total += kHeader + m->nbytes;
      if (m->reader == rank) {
        for (int32_t p : m->pieces)
          files.get(index[static_cast<size_t>(plan.pieces[p].chunk)].file);
      }
    }
    arena.emplace(std::max(largest, std::min(total, options.staging_bytes)));
  });
  Transport& transport = *transports.back();
  ErrorKind failed = ErrorKind::kNone;
  std::string read_error;
  try {
    at::NoGradGuard no_grad;
    std::deque<InFlight> in_flight;
    auto apply = [&](InFlight& f) {
      if (f.delivery) f.delivery->wait();
      if (f.landed) return;
      char* base = arena->data() + f.offset;
      uint64_t status;
      std::memcpy(&status, base, kHeader);
      if (status != 0) return;  // the reader failed; it reports the error itself
      int64_t pos = kHeader;
      for (int32_t p : f.message->pieces) {
        const Piece& piece = plan.pieces[static_cast<size_t>(p)];
        if (const int32_t need = plan.need_of(piece, rank); need >= 0) {
          const Need& n = my_needs[static_cast<size_t>(need)];
          const PartitionEntry& entry =
              partition.entries()[static_cast<size_t>(my_entry_of_need[static_cast<size_t>(need)])];
          const ChunkRecord& row = index[static_cast<size_t>(piece.chunk)];
          at::Tensor src = at::from_blob(base + pos, piece.box.shape,
                                         at::TensorOptions().dtype(scalar_type_of(row.dtype)));
          at::Tensor dst = destination_view(entry, n, piece.box);
          dst.copy_(src.view(dst.sizes()));
        }
        pos += piece.nbytes;
      }
    };
    // This rank's destination of a single-piece message when the bytes can land there as they
    // are: a contiguous CPU view of the checkpoint's dtype. Undefined otherwise.
    auto direct_destination = [&](const Message& m) -> at::Tensor {
      const Piece& piece = plan.pieces[static_cast<size_t>(m.pieces[0])];
      if (const int32_t need = plan.need_of(piece, rank); need >= 0) {
        const PartitionEntry& entry =
            partition.entries()[static_cast<size_t>(my_entry_of_need[static_cast<size_t>(need)])];
        const Need& n = my_needs[static_cast<size_t>(need)];
        at::Tensor dst = destination_view(entry, n, piece.box);
        const ChunkRecord& row = index[static_cast<size_t>(piece.chunk)];
        if (dst.device().is_cpu() && dst.is_contiguous() &&
            dst.scalar_type() == scalar_type_of(row.dtype) &&
            dst.nbytes() == static_cast<size_t>(piece.nbytes)) {
          return dst;
        }
      }
      return at::Tensor();
    };
    auto retire_front = [&] {
      apply(in_flight.front());
      arena->release(in_flight.front().offset);
      in_flight.pop_front();
    };
    for (const Message* m : mine) {
      int64_t size = kHeader + m->nbytes;
      std::optional<int64_t> offset;
      while (!(offset = arena->allocate(size))) retire_front();
      InFlight f{m, *offset, nullptr};
      char* base = arena->data() + f.offset;
      uint64_t status = 0;
      if (m->reader == rank) {
        int64_t pos = kHeader;
        try {
          maybe_inject_failure("read", rank);
          for (int32_t p : m->pieces) {
            const Piece& piece = plan.pieces[static_cast<size_t>(p)];
            const ChunkRecord& row = index[static_cast<size_t>(piece.chunk)];
            Shape in_chunk(piece.box.offset.size());
            for (size_t d = 0; d < in_chunk.size(); ++d) {
              in_chunk[d] = piece.box.offset[d] - row.offset[d];
            }
            files.get(row.file).read(row, in_chunk, piece.box.shape, base + pos,
                                     options.verify_checksums);
            pos += piece.nbytes;
            result.bytes_read += piece.nbytes;
          }
        } catch (const std::exception& e) {
          // Keep the other ranks in step: deliver anyway, flagged, and report at phase end.
          status = 1;
          if (failed == ErrorKind::kNone) {
            failed = current_error_kind();
            read_error = e.what();
          }
        }
        std::memcpy(base, &status, kHeader);
      }
      if (two_step(plan, *m)) {
        // Step 1, the status: small, completed at once (the reader has read by now).
        transport.start(base, kHeader, m->reader, plan.ranks_of(*m))->wait();
        std::memcpy(&status, base, kHeader);
        if (status == 0) {
          void* into = base + kHeader;
          if (m->reader != rank) {
            if (at::Tensor dst = direct_destination(*m); dst.defined()) {
              into = dst.data_ptr();
              f.landed = true;
            }
          }
          f.delivery =
              transport.start(into, static_cast<size_t>(m->nbytes), m->reader, plan.ranks_of(*m));
        }
      } else if (plan.ranks_of(*m).size() > 1) {
        f.delivery = transport.start(base, static_cast<size_t>(size), m->reader, plan.ranks_of(*m));
      }
      in_flight.push_back(std::move(f));
    }
    while (!in_flight.empty()) retire_front();
  } catch (const std::exception& e) {
    // Only the transport or a copy can get here; MPI aborts on what it cannot return from.
    failed = current_error_kind();
    read_error = e.what();
  }
  phases.reduce("transfer", failed, read_error);
  result.seconds.transfer = seconds_since(t);

  // 6. Result: the figures every rank reports.
  t = Clock::now();
  result.bytes_read_total = comm.allreduce_sum(result.bytes_read);
  for (const auto& p : plan.pieces) result.bytes_needed_total += p.nbytes;
  result.seconds.result = seconds_since(t);
  result.wall_seconds = comm.allreduce_max(seconds_since(load_start));
  result.checksums_verified = options.verify_checksums;
  return result;
}

LoadResult load(torch::nn::Module& module, const std::string& path, MPI_Comm comm,
                const LoadOptions& options, const std::vector<SplitRule>& rules) {
  Partition partition = Partition::from_module(module, rules);
  return load(partition, path, comm, options);
}

}  // namespace shardload
