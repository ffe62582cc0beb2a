#include "io/commit/save_lock.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <iomanip>
#include <random>
#include <sstream>

#include "core/error.h"
#include "io/commit/checkpoint_dir.h"

namespace shardload {
namespace {

constexpr const char* kLockHeader = "shardload-save-lock 1";
constexpr size_t kMaxLockBytes = 4096;

std::string host_name() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

std::string this_boot_id() {
  auto text = read_small_file("/proc/sys/kernel/random/boot_id", 64);
  if (!text) return "";
  std::string s = *text;
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot); -1 when there is no such
/// live process (no entry, or a zombie). The command name (field 2) may hold spaces and
/// parentheses: fields are counted after its last ')'.
int64_t process_start_ticks(int64_t pid) {
  auto text = read_small_file("/proc/" + std::to_string(pid) + "/stat", 4096);
  if (!text) return -1;
  auto close = text->rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream in(text->substr(close + 1));
  std::string field;
  for (int i = 3; i <= 22; ++i) {
    if (!(in >> field)) return -1;
    if (i == 3 && (field == "Z" || field == "X")) return -1;
  }
  try {
    return std::stoll(field);
  } catch (const std::exception&) {
    return -1;
  }
}

std::string random_id() {
  std::random_device rd;
  uint64_t v = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  std::ostringstream s;
  s << std::hex << std::setw(16) << std::setfill('0') << v;
  return s.str();
}

bool owner_alive(const LockOwner& o, double age_seconds) {
  static const std::string my_host = host_name();
  static const std::string my_boot = this_boot_id();
  if (o.host == my_host && !o.boot_id.empty() && o.boot_id == my_boot) {
    if (o.pid <= 0) return false;
    int64_t ticks = process_start_ticks(o.pid);
    if (ticks >= 0) return ticks == o.start_ticks;  // a reused pid has another start time
    if (::access("/proc/self/stat", F_OK) == 0) return false;  // no /proc entry: gone
    return ::kill(static_cast<pid_t>(o.pid), 0) == 0 || errno == EPERM;
  }
  if (o.host == my_host && !o.boot_id.empty() && !my_boot.empty()) return false;  // rebooted
  return age_seconds < kStaleLockSeconds;
}

}  // namespace

LockOwner LockOwner::current() {
  LockOwner o;
  o.pid = ::getpid();
  o.host = host_name();
  o.boot_id = this_boot_id();
  o.start_ticks = process_start_ticks(o.pid);
  o.started = utc_timestamp();
  o.id = random_id();
  return o;
}

std::string LockOwner::describe() const {
  return "pid " + std::to_string(pid) + " on host " + host + ", since " + started;
}

std::string LockOwner::to_text() const {
  std::ostringstream s;
  s << kLockHeader << "\npid=" << pid << "\nhost=" << host << "\nboot_id=" << boot_id
    << "\nstart_ticks=" << start_ticks << "\nstarted=" << started << "\nid=" << id << "\n";
  return s.str();
}

LockOwner LockOwner::from_text(const std::string& text) {
  LockOwner o;
  std::istringstream in(text);
  std::string line;
  if (!std::getline(in, line) || line != kLockHeader) return o;
  LockOwner parsed;
  try {
    while (std::getline(in, line)) {
      auto eq = line.find('=');
      if (eq == std::string::npos) continue;
      std::string key = line.substr(0, eq), value = line.substr(eq + 1);
      if (key == "pid") parsed.pid = std::stoll(value);
      if (key == "host") parsed.host = value;
      if (key == "boot_id") parsed.boot_id = value;
      if (key == "start_ticks") parsed.start_ticks = std::stoll(value);
      if (key == "started") parsed.started = value;
      if (key == "id") parsed.id = value;
    }
  } catch (const std::exception&) {
    return o;
  }
  return parsed;
}

std::string lock_path_of(const std::string& path) {
  std::string parent = parent_dir_of(path);
  return (parent == "." ? "" : parent + "/") + "." + base_name_of(path) + ".lock";
}

LockState read_lock(const std::string& path) {
  LockState state;
  std::string file = lock_path_of(path);
  struct stat st {};
  if (::lstat(file.c_str(), &st) != 0) return state;
  state.exists = true;
  state.age_seconds = std::difftime(std::time(nullptr), st.st_mtime);
  auto text = read_small_file(file, kMaxLockBytes);
  if (text && text->size() <= kMaxLockBytes) state.owner = LockOwner::from_text(*text);
  if (state.owner.id.empty()) {
    // Unreadable or still being written: alive until it is stale by age.
    state.alive = state.age_seconds < kStaleLockSeconds;
  } else {
    state.alive = owner_alive(state.owner, state.age_seconds);
  }
  return state;
}

std::unique_ptr<SaveLock> SaveLock::try_acquire(const std::string& path, LockState* holder) {
  const std::string file = lock_path_of(path);
  LockOwner me = LockOwner::current();
  std::vector<std::string> notes;
  for (int attempt = 0; attempt < 8; ++attempt) {
    // The record is complete before it appears under the lock's name: link() of a flushed
    // temporary is atomic, also on NFS. Where link() is not supported, O_EXCL creation.
    std::string tmp = file + "." + me.id;
    {
      int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd < 0) {
        throw FormatError(file + ": cannot create the save lock: " + std::strerror(errno));
      }
      std::string text = me.to_text();
      bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
      ok = ::fsync(fd) == 0 && ok;
      ::close(fd);
      if (!ok) {
        ::unlink(tmp.c_str());
        throw FormatError(file + ": cannot write the save lock: " + std::strerror(errno));
      }
    }
    int rc = ::link(tmp.c_str(), file.c_str());
    int err = errno;
    if (rc != 0 && (err == EPERM || err == ENOTSUP || err == ENOSYS)) {
      rc = ::rename(tmp.c_str(), file.c_str()) == 0 ? 0 : -1;  // not exclusive: re-read below
      err = errno;
      if (rc == 0) {
        auto back = read_small_file(file, kMaxLockBytes);
        if (!back || LockOwner::from_text(*back).id != me.id) {
          rc = -1;
          err = EEXIST;
        }
      }
    }
    ::unlink(tmp.c_str());
    if (rc == 0) {
      fsync_dir(parent_dir_of(file));
      return std::unique_ptr<SaveLock>(new SaveLock(file, me, std::move(notes)));
    }
    if (err != EEXIST) {
      throw FormatError(file + ": cannot take the save lock: " + std::strerror(err));
    }
    LockState state = read_lock(path);
    if (!state.exists) continue;  // released meanwhile
    if (state.alive) {
      if (holder) *holder = state;
      return nullptr;
    }
    // A dead save's lock: move it out of the way, then make sure it was the one judged dead
    // (another process may have broken it and taken the lock meanwhile).
    std::string broken = file + ".dead-" + me.id;
    if (::rename(file.c_str(), broken.c_str()) != 0) continue;
    auto text = read_small_file(broken, kMaxLockBytes);
    LockOwner moved = text ? LockOwner::from_text(*text) : LockOwner{};
    if (moved.id != state.owner.id) {
      if (::link(broken.c_str(), file.c_str()) != 0) {
        ::unlink(broken.c_str());
        throw FormatError(file + ": the save lock changed hands while a dead one was removed");
      }
      ::unlink(broken.c_str());
      continue;
    }
    ::unlink(broken.c_str());
    notes.push_back(
        path + ": removed the lock of a dead save (" +
        (state.owner.id.empty() ? std::string("unreadable lock file") : state.owner.describe()) +
        ")");
  }
  throw FormatError(file + ": could not take the save lock (it kept changing hands)");
}

std::unique_ptr<SaveLock> SaveLock::acquire(const std::string& path) {
  LockState holder;
  auto lock = try_acquire(path, &holder);
  if (!lock) {
    throw UsageError(path + ": another save of this checkpoint is in progress (" +
                     (holder.owner.id.empty() ? std::string("lock file being written")
                                              : holder.owner.describe()) +
                     "; lock " + lock_path_of(path) +
                     "); if that save is dead, remove the lock file");
  }
  return lock;
}

SaveLock::SaveLock(std::string path, LockOwner owner, std::vector<std::string> notes)
    : path_(std::move(path)), owner_(std::move(owner)), notes_(std::move(notes)) {
  thread_ = std::thread([this] { heartbeat(); });
}

SaveLock::~SaveLock() {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (still_held()) {
    ::unlink(path_.c_str());
    fsync_dir(parent_dir_of(path_));
  }
}

bool SaveLock::still_held() const {
  auto text = read_small_file(path_, kMaxLockBytes);
  return text && LockOwner::from_text(*text).id == owner_.id;
}

void SaveLock::heartbeat() {
  std::unique_lock<std::mutex> guard(mutex_);
  while (!wake_.wait_for(guard, std::chrono::seconds(kLockHeartbeatSeconds),
                         [this] { return stop_; })) {
    if (still_held()) ::utimensat(AT_FDCWD, path_.c_str(), nullptr, 0);  // mtime := now
  }
}

}  // namespace shardload
