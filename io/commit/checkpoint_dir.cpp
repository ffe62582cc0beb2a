#include "io/commit/checkpoint_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <random>

#include "core/crash_point.h"
#include "core/error.h"
#include "io/atomic_file.h"
#include "io/commit/commit_journal.h"
#include "io/commit/save_lock.h"
#include "io/h5/format.h"

namespace shardload {
namespace fs = std::filesystem;
namespace {

// renameat2 flags (linux/fs.h), spelled out: glibc's <stdio.h> has them only from 2.28 on.
constexpr unsigned kRenameNoReplace = 1;
constexpr unsigned kRenameExchange = 2;

/// SHARDLOAD_RENAME=fallback makes a commit behave as on a filesystem without renameat2 flags
/// (NFS, Lustre, FUSE), for the tests of that path.
bool forced_fallback() {
  const char* mode = std::getenv("SHARDLOAD_RENAME");
  return mode != nullptr && std::string(mode) == "fallback";
}

/// renameat2 with `flags`; errno ENOSYS when it is missing or the fallback is forced.
int rename_with_flags(const std::string& from, const std::string& to, unsigned flags) {
  if (forced_fallback()) {
    errno = ENOSYS;
    return -1;
  }
#ifdef SYS_renameat2
  return static_cast<int>(
      ::syscall(SYS_renameat2, AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags));
#else
  errno = ENOSYS;
  return -1;
#endif
}

/// errno values by which a filesystem says it has no such rename.
bool unsupported(int err) { return err == EINVAL || err == ENOSYS || err == EOPNOTSUPP; }

std::string errno_text(int err) { return std::strerror(err); }

bool is_empty_dir(const std::string& dir) {
  std::error_code ec;
  return fs::directory_iterator(dir, ec) == fs::directory_iterator() && !ec;
}

}  // namespace

bool is_checkpoint_dir(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) return false;
  return ::lstat((path + "/" + kManifestName).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

void check_save_target(const std::string& path, bool overwrite) {
  if (path.empty()) throw UsageError("empty checkpoint path");
  std::string parent = parent_dir_of(path);
  struct stat st {};
  if (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    throw UsageError(path + ": parent directory " + parent + " does not exist");
  }
  if (::access(parent.c_str(), W_OK) != 0) {
    throw UsageError(path + ": parent directory " + parent + " is not writable");
  }
  if (::lstat(path.c_str(), &st) != 0) return;
  if (!overwrite) {
    throw UsageError(path +
                     ": already exists (pass --overwrite, or SaveOptions::overwrite, to "
                     "replace a checkpoint)");
  }
  if (S_ISLNK(st.st_mode)) {
    std::error_code ec;
    std::string target = fs::read_symlink(path, ec).string();
    throw UsageError(path + ": is a symbolic link (to " + target +
                     "), not a shardload checkpoint; refusing to replace it (give the "
                     "checkpoint's own path)");
  }
  if (!S_ISDIR(st.st_mode)) {
    throw UsageError(path +
                     ": exists and is a file, not a shardload checkpoint; refusing to replace it");
  }
  if (is_checkpoint_dir(path)) return;
  if (!is_empty_dir(path)) {
    throw UsageError(path + ": exists and is a directory without " + kManifestName +
                     " that is not empty, not a shardload checkpoint; refusing to replace it");
  }
}

std::string make_staging_dir(const std::string& path) {
  // Like mkdtemp, but with mkdir's permissions (umask applied), which the checkpoint keeps.
  static constexpr char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::random_device rd;
  const std::string prefix = sibling_path(path, "." + base_name_of(path) + ".tmp-");
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string dir = prefix;
    for (int i = 0; i < 6; ++i) dir.push_back(kChars[rd() % (sizeof kChars - 1)]);
    if (::mkdir(dir.c_str(), 0777) == 0) return dir;
    if (errno != EEXIST) {
      throw FormatError(path + ": cannot create staging directory: " + errno_text(errno));
    }
  }
  throw FormatError(path + ": cannot create staging directory: no free name");
}

void commit_staging_dir(const std::string& staging, const std::string& path, bool overwrite) {
  fsync_dir(staging);
  crash_point("before-commit");
  check_save_target(path, overwrite);  // again: the path may have changed during the save
  const std::string parent = parent_dir_of(path);
  auto done = [&] {
    fsync_dir(parent);
    crash_point("committed");
  };

  if (!path_exists(path)) {
    if (rename_with_flags(staging, path, kRenameNoReplace) != 0) {
      int err = errno;
      if (unsupported(err)) {
        // No RENAME_NOREPLACE: rename() still refuses a non-empty directory or a file there.
        if (::rename(staging.c_str(), path.c_str()) != 0)
          err = errno;
        else
          err = 0;
      }
      if (err == EEXIST || err == ENOTEMPTY || err == ENOTDIR || err == EISDIR) {
        throw UsageError(path + ": appeared while the save was running; refusing to replace it");
      }
      if (err != 0) {
        throw FormatError(path +
                          ": cannot rename the new checkpoint into place: " + errno_text(err));
      }
    }
    fsync_dir(parent);
    crash_point("renamed");
    done();
    return;
  }

  // Replace a checkpoint (or an empty directory): one atomic swap where the filesystem has it.
  if (rename_with_flags(staging, path, kRenameExchange) == 0) {
    fsync_dir(parent);
    crash_point("renamed");
    remove_tree_noexcept(staging);  // now holds the previous checkpoint
    crash_point("old-removed");
    done();
    return;
  }
  if (!unsupported(errno)) {
    throw FormatError(path + ": cannot swap in the new checkpoint: " + errno_text(errno));
  }
  if (!is_checkpoint_dir(path)) {
    // An empty directory: rename() replaces it atomically, no aside needed.
    if (::rename(staging.c_str(), path.c_str()) != 0) {
      int err = errno;
      if (err == ENOTEMPTY || err == EEXIST) {
        throw UsageError(path + ": is no longer empty; refusing to replace it");
      }
      throw FormatError(path + ": cannot rename the new checkpoint into place: " + errno_text(err));
    }
    fsync_dir(parent);
    crash_point("renamed");
    done();
    return;
  }

  // No atomic exchange (NFS, Lustre, FUSE): a journal first, then two renames. Until the journal
  // is removed, restore_interrupted_commit can put a complete checkpoint back at `path`.
  CommitJournal journal;
  journal.staging = base_name_of(staging);
  journal.aside = journal.staging + ".old";
  journal.owner = LockOwner::current().describe();
  const std::string aside = sibling_path(path, journal.aside);
  if (journal.staging.empty() || parent_dir_of(staging) != parent) {
    throw FormatError(staging + ": the staging directory is not beside " + path);
  }
  write_commit_journal(path, journal);
  crash_point("journal-written");
  if (::rename(path.c_str(), aside.c_str()) != 0) {
    int err = errno;
    ::unlink(commit_journal_path(path).c_str());
    throw FormatError(path + ": cannot move the previous checkpoint aside: " + errno_text(err));
  }
  crash_point("between-renames");
  if (::rename(staging.c_str(), path.c_str()) != 0) {
    int err = errno;
    if (::rename(aside.c_str(), path.c_str()) == 0) ::unlink(commit_journal_path(path).c_str());
    throw FormatError(path + ": cannot rename the new checkpoint into place: " + errno_text(err));
  }
  fsync_dir(parent);
  crash_point("renamed");
  remove_tree_noexcept(aside);
  crash_point("old-removed");
  ::unlink(commit_journal_path(path).c_str());
  done();
}

CheckpointStaging::CheckpointStaging(const std::string& path, bool overwrite)
    : path_(path), overwrite_(overwrite) {
  if (path.empty()) throw UsageError("empty checkpoint path");
  check_save_target(path, overwrite);  // parent and target, before anything is written
  lock_ = SaveLock::acquire(path);
  notes_ = lock_->notes();
  for (auto& n : restore_interrupted_commit(path)) notes_.push_back(std::move(n));
  for (auto& n : remove_dead_leftovers(path)) notes_.push_back(std::move(n));
  check_save_target(path, overwrite);  // a restored checkpoint counts as an existing one
  staging_ = make_staging_dir(path);
  crash_point("staged");
}

CheckpointStaging::~CheckpointStaging() {
  if (!committed_ && !staging_.empty()) remove_tree_noexcept(staging_);
  lock_.reset();
}

void CheckpointStaging::commit() {
  if (!lock_->still_held()) {
    throw FormatError(path_ + ": the save lock " + lock_path_of(path_) +
                      " was taken over by another process during the save; not committing");
  }
  commit_staging_dir(staging_, path_, overwrite_);
  committed_ = true;
}

void remove_tree_noexcept(const std::string& path) noexcept {
  // The commit marker first: a removal cut short never leaves what looks like a checkpoint.
  std::error_code ec;
  if (is_checkpoint_dir(path)) ::unlink((path + "/" + kManifestName).c_str());
  fs::remove_all(path, ec);
}

}  // namespace shardload
