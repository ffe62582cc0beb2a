// The checkpoint directory on disk: staging a save beside the target and committing it with one
// rename, so that a crash never damages or hides the previous checkpoint.
#pragma once

#include <string>

namespace shardload {

/// True when `path` exists (file or directory).
bool path_exists(const std::string& path);

/// Checks, before anything is written, that a checkpoint may be saved at `path`: its parent
/// directory exists and is writable, and `path` is absent — or is a checkpoint directory and
/// `overwrite` is set. Throws UsageError/FormatError naming the path otherwise.
void check_save_target(const std::string& path, bool overwrite);

/// Creates a fresh, empty staging directory beside `path` (".NAME.tmp-XXXXXX") and returns it.
std::string make_staging_dir(const std::string& path);

/// Moves the complete `staging` directory to `path`. When `path` exists it is swapped atomically
/// with the new directory (renameat2 RENAME_EXCHANGE) and the old one is removed afterwards, so
/// at every instant `path` holds a complete checkpoint. Flushes the parent directory.
void commit_staging_dir(const std::string& staging, const std::string& path);

/// Flushes a written file to stable storage. Throws FormatError naming it on failure.
void fsync_file(const std::string& path);

/// The current UTC time, ISO 8601 ("2026-11-28T16:00:00Z"), as manifests record it.
std::string utc_timestamp();

/// Removes a directory tree; never throws (best effort, for cleanup).
void remove_tree_noexcept(const std::string& path) noexcept;

}  // namespace shardload
