// The asynchronous save (docs/GUARANTEES.md, "Asynchronous save"): the caller waits for a copy of
// its state in host memory; writing, fsyncs, commit and `latest` happen on a background thread
// with exactly the guarantees of save().
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>

#include "loader/partition.h"
#include "loader/save.h"

namespace shardload {

/// A save running in the background. Copyable; all copies name the same save.
class SaveHandle {
 public:
  struct State;
  SaveHandle() = default;
  explicit SaveHandle(std::shared_ptr<State> state) : state_(std::move(state)) {}

  /// Whether the save has finished (committed or failed). Not blocking, not collective.
  bool done() const;
  /// Waits for the save to finish and returns its result, or throws its error: the same result
  /// or error on every rank (the background save agrees on it collectively, on its own
  /// communicator). Not collective: a rank may wait while the others train. Every call after the
  /// first returns (or throws) the same again.
  SaveResult wait() const;
  /// Seconds save_async() blocked the caller on this rank (the snapshot and one agreement).
  double blocked_seconds() const;

 private:
  std::shared_ptr<State> state_;
};

/// save() in the background. Returns once every tensor of `partition` is copied into host memory
/// owned by the save (SnapshotPool: reused across saves, bounded by
/// SaveOptions::snapshot_limit_bytes): the caller may change or free its tensors right away. The
/// write, fsyncs, commit and `latest` then run on a background thread on a duplicate of `comm`
/// made at the first async save on it (never a collective on `comm` itself after that), with
/// save()'s guarantees: the previous checkpoint survives a crash at any moment, `latest` names
/// only committed steps, a failure leaves nothing behind.
///
/// Collective over `comm` (two small agreements, under options.timeout_seconds). A save to the
/// same path (run directory root or checkpoint) still in flight is waited for first, as by
/// save(). Needs MPI_THREAD_MULTIPLE (UsageError otherwise, on every rank). When a rank's
/// snapshot would not fit the limit, throws UsageError on every rank naming the ranks and bytes,
/// or with options.sync_fallback saves synchronously (the handle is done on return). A bad
/// partition (a tensor resized since it was added) throws as save() does. Errors of the
/// background part (declarations, I/O, the commit) are thrown by wait(), on every rank.
/// options.progress is called on the background thread.
///
/// A save still running when MPI_Finalize is called is finished there first; one running when
/// the process ends without MPI_Finalize dies with it, leaving the previous checkpoint.
SaveHandle save_async(const Partition& partition, const std::string& path, MPI_Comm comm,
                      const SaveOptions& options = {});

/// Waits for every asynchronous save of this process to finish (their errors are their
/// handles'). Not collective.
void wait_for_saves();
/// Frees the snapshot memory kept for later saves, after waiting for the saves in flight.
/// Returns the bytes freed. Not collective.
int64_t release_snapshot_memory();
/// Bytes of snapshot memory this process holds (in use or kept for the next save).
int64_t snapshot_memory_bytes();

/// Whether an asynchronous save of this process failed with a TimeoutError (a rank it waited
/// for is stuck: MPI_Finalize would wait for it too, so the process should end with MPI_Abort).
bool an_async_save_timed_out();

/// Waits for an asynchronous save to `path` (the same run directory root or checkpoint) that is
/// still in flight. save() and save_async() call it first.
void wait_for_save_to(const std::string& path);

}  // namespace shardload
