// The collective save (DESIGN.md §2).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/value.h"
#include "loader/partition.h"
#include "loader/progress.h"

namespace shardload {

struct SaveOptions {
  /// Replace an existing checkpoint at the path (only ever by a complete new one).
  bool overwrite = false;
  /// Caller's metadata (step, epoch, ...), stored as strings in the manifest.
  std::vector<std::pair<std::string, std::string>> metadata;
  /// The state's plain values (a step, a scheduler's state, hyper-parameters), stored typed in
  /// the manifest (docs/FORMAT.md) and loaded back by key (LoadOptions::value_keys). They are
  /// the job's: every rank passes the same ones (a difference is a UsageError naming the key and
  /// ranks), and no key may also be a tensor's.
  ValueList values;
  /// Seconds a rank waits for the others at a phase boundary before the save fails, naming the
  /// ranks that did not arrive. <= 0: wait forever.
  double timeout_seconds = 600;
  /// Progress reports on this rank (see Progress); empty: none.
  ProgressCallback progress;
  /// >= 0: `path` is a run directory ROOT (created when missing) and the checkpoint is saved as
  /// ROOT/step-N; ROOT/latest names it once it is complete (Megatron's and DeepSpeed's restart
  /// convention; load(ROOT) reads what `latest` names). -1: `path` is the checkpoint itself.
  int64_t step = -1;
  /// With `step`: after the save, keep only the `keep_last` highest step-N checkpoints of ROOT
  /// (never the one `latest` names). 0: keep all.
  int keep_last = 0;
  /// The most host memory a save copies one tensor through at a time: a tensor in device memory
  /// or not contiguous is written in pieces (boxes of its rows) of at most this many bytes, so
  /// that a save holds no second copy of a large tensor (docs/GUARANTEES.md, "Memory").
  int64_t staging_bytes = 64ll << 20;
  /// save_async: the most host memory this rank's snapshots may hold at once, in bytes (the
  /// snapshot of a save in flight plus what is kept for the next). 0: half of the machine's
  /// physical memory.
  int64_t snapshot_limit_bytes = 0;
  /// save_async: when a rank's snapshot does not fit snapshot_limit_bytes, save synchronously on
  /// every rank (the handle is done on return) instead of throwing UsageError.
  bool sync_fallback = false;
};

struct SaveResult {
  int num_shards = 0;
  int64_t bytes_written = 0;        ///< tensor bytes this rank wrote
  int64_t bytes_written_total = 0;  ///< summed over ranks
  int64_t chunks_written = 0;       ///< chunks this rank wrote
  double seconds = 0;               ///< wall time of the save (max over ranks)
  std::string path;                 ///< the checkpoint directory written (ROOT/step-N with step)
  /// What the save did besides writing (identical on every rank): a checkpoint that a killed
  /// save had left beside the path restored, dead saves' leftovers or old steps removed.
  std::vector<std::string> notes;
  /// The save ran in the background (save_async, not its synchronous fallback).
  bool asynchronous = false;
  /// Seconds the caller was blocked on this rank: the whole save, or save_async()'s snapshot.
  double blocked_seconds = 0;
};

/// Saves every rank's partition as one checkpoint directory at `path`: one shard file per rank,
/// replicated tensors written once, split tensors one chunk per holder, the manifest last, all in
/// a staging directory renamed into place when complete (docs/GUARANTEES.md: what survives a
/// crash, the save lock, what `overwrite` may replace). Rank 0 holds the save lock of `path`
/// from start to commit; a live save of the same path is a UsageError.
/// Collective: every rank of `comm` calls it with the same path and options. Throws the same
/// exception on every rank, before anything is written, when the declarations are inconsistent
/// (UsageError naming key and ranks) or the path may not be written (checked again at commit);
/// on an I/O failure, throws on every rank and leaves any previous checkpoint at `path` untouched.
/// An asynchronous save to the same path still in flight (save_async) is waited for first.
SaveResult save(const Partition& partition, const std::string& path, MPI_Comm comm,
                const SaveOptions& options = {});

namespace detail {
/// save() without waiting for a save in flight (the background thread's).
SaveResult save_now(const Partition& partition, const std::string& path, MPI_Comm comm,
                    const SaveOptions& options);
}  // namespace detail

}  // namespace shardload
