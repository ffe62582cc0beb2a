// The checkpoint directory on disk: staging a save beside the target under the path's save lock
// and committing it so that a crash never damages or hides the previous checkpoint, on any
// filesystem (docs/GUARANTEES.md).
//
// Beside a checkpoint PARENT/NAME a save uses, all hidden:
//   .NAME.lock             the save lock (io/commit/save_lock.h)
//   .NAME.tmp-XXXXXX       the staging directory: the new checkpoint while it is written
//   .NAME.tmp-XXXXXX.old   the previous checkpoint, moved aside (only without RENAME_EXCHANGE)
//   .NAME.commit           the commit journal naming those two (only without RENAME_EXCHANGE)
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "io/file_system.h"  // IWYU pragma: export

namespace shardload {

class SaveLock;

/// True when `path` is a directory (not a symbolic link) holding a manifest.h5 file: a complete
/// checkpoint, as far as the commit marker tells.
bool is_checkpoint_dir(const std::string& path);

/// Checks that a checkpoint may be saved at `path`: its parent directory exists and is writable,
/// and `path` is absent, or `overwrite` is set and `path` is a checkpoint directory or an empty
/// directory (never a file, a symbolic link or a directory with other contents). Throws
/// UsageError naming the path otherwise. A save checks this before it writes and again at commit.
void check_save_target(const std::string& path, bool overwrite);

/// Creates a fresh, empty staging directory beside `path` (".NAME.tmp-XXXXXX") and returns it.
std::string make_staging_dir(const std::string& path);

/// Moves the complete `staging` directory to `path`, checking the target again first
/// (check_save_target). When `path` holds a checkpoint it is swapped atomically with the new
/// directory (renameat2 RENAME_EXCHANGE) and the old one removed afterwards. Where the
/// filesystem has no exchange (NFS, Lustre, many FUSE mounts) or SHARDLOAD_RENAME=fallback is
/// set, a journal (.NAME.commit, flushed) is written first, the old checkpoint is moved aside
/// and the new one renamed in; an interruption between the two renames is undone by
/// restore_interrupted_commit (io/commit/commit_journal.h). Flushes the parent directory.
void commit_staging_dir(const std::string& staging, const std::string& path, bool overwrite = true);

/// A save of one checkpoint directory in progress. Not collective: one process owns it (rank 0
/// of a collective save).
class CheckpointStaging {
 public:
  /// Takes the save lock of `path` (a live save's lock is a UsageError naming it), restores a
  /// checkpoint a dead save left beside it, removes dead saves' leftovers, checks the target
  /// (check_save_target) and creates the staging directory. notes() tells what was done.
  CheckpointStaging(const std::string& path, bool overwrite);
  /// Removes the staging directory unless committed, and releases the lock. Never throws.
  ~CheckpointStaging();
  CheckpointStaging(const CheckpointStaging&) = delete;
  CheckpointStaging& operator=(const CheckpointStaging&) = delete;

  /// The staging directory the new checkpoint is written into.
  const std::string& dir() const { return staging_; }
  const std::string& path() const { return path_; }
  const std::vector<std::string>& notes() const { return notes_; }

  /// Checks that the lock is still this save's, then commit_staging_dir(dir(), path()).
  void commit();

 private:
  std::string path_;
  bool overwrite_;
  std::unique_ptr<SaveLock> lock_;
  std::string staging_;
  std::vector<std::string> notes_;
  bool committed_ = false;
};

/// Removes a directory tree, a checkpoint's manifest.h5 first (so that a removal cut short never
/// leaves what looks like a checkpoint); never throws (best effort, for cleanup).
void remove_tree_noexcept(const std::string& path) noexcept;

}  // namespace shardload
