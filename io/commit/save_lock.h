// The lock of the saves of one checkpoint path: `.NAME.lock` beside it records who is saving
// (pid, host, boot, start time, a random id), so that the next save can tell a dead save's
// leftovers from a live save's work. Rule (docs/GUARANTEES.md): a lock taken on this host is
// dead when its process is gone (pid and process start time both checked) or the host has
// rebooted since; a lock from another host is dead when its owner has not refreshed it for
// kStaleLockSeconds (a live owner refreshes it every kLockHeartbeatSeconds).
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace shardload {

/// A live owner refreshes its lock file's modification time this often.
inline constexpr int kLockHeartbeatSeconds = 30;
/// A lock from another host not refreshed for this long belongs to a dead save.
inline constexpr int kStaleLockSeconds = 600;

/// Who holds a save lock.
struct LockOwner {
  int64_t pid = 0;
  std::string host;
  std::string boot_id;      ///< /proc/sys/kernel/random/boot_id of the owner's host
  int64_t start_ticks = 0;  ///< the owner process's start time (/proc/PID/stat field 22)
  std::string started;      ///< UTC time the lock was taken, ISO 8601
  std::string id;           ///< random, tells two takings of the lock apart

  /// This process, with a fresh random id.
  static LockOwner current();
  /// "pid 1234 on host node7, since 2026-11-28T16:00:00Z".
  std::string describe() const;
  /// Text form stored in the lock file, and its parser (nullopt-like: empty id when the text
  /// is not a lock record).
  std::string to_text() const;
  static LockOwner from_text(const std::string& text);
};

/// Path of the lock file of saves of `path`: `PARENT/.NAME.lock` (`.NAME.lock` in ".").
std::string lock_path_of(const std::string& path);

/// What a lock file says and whether its owner is still alive by the rule above.
struct LockState {
  bool exists = false;
  bool alive = false;
  LockOwner owner;         ///< empty id when the file could not be parsed
  double age_seconds = 0;  ///< since the last refresh
};

/// Reads the lock of `path` (never throws; a missing file gives exists = false).
LockState read_lock(const std::string& path);

/// A held save lock. Not collective: one process (rank 0 of a save) holds it. A background
/// thread refreshes the lock file every kLockHeartbeatSeconds; the destructor stops it and
/// removes the file when it is still this holder's.
class SaveLock {
 public:
  /// Takes the lock of `path`, breaking the lock of a dead save. Returns null, and the live
  /// holder in `*holder`, when a live save holds it. Throws FormatError naming the lock file when
  /// it cannot be created (e.g. a read-only directory).
  static std::unique_ptr<SaveLock> try_acquire(const std::string& path, LockState* holder);
  /// Like try_acquire, but a live holder is a UsageError naming the path and the holder.
  static std::unique_ptr<SaveLock> acquire(const std::string& path);

  ~SaveLock();
  SaveLock(const SaveLock&) = delete;
  SaveLock& operator=(const SaveLock&) = delete;

  const LockOwner& owner() const { return owner_; }
  /// True when the lock file still names this holder (nobody broke it meanwhile).
  bool still_held() const;
  /// What taking the lock did on the way (e.g. broke a dead save's lock), for the caller's notes.
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  SaveLock(std::string path, LockOwner owner, std::vector<std::string> notes);
  void heartbeat();

  std::string path_;  // the lock file
  LockOwner owner_;
  std::vector<std::string> notes_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace shardload
