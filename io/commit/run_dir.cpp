#include "io/commit/run_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <map>
#include <set>
#include <thread>

#include "core/crash_point.h"
#include "core/error.h"
#include "io/commit/checkpoint_dir.h"
#include "io/commit/commit_journal.h"
#include "io/commit/save_lock.h"
#include "io/h5/format.h"

namespace shardload {
namespace fs = std::filesystem;
namespace {

constexpr size_t kMaxLatestBytes = 256;
/// How long a reader waits for a live save that is between its two renames.
constexpr double kRestoreWaitSeconds = 10;

/// N when `name` is "step-N" (decimal, at most 18 digits); -1 otherwise.
int64_t step_of(const std::string& name) {
  const std::string prefix = "step-";
  if (name.size() <= prefix.size() || name.size() > prefix.size() + 18 ||
      name.compare(0, prefix.size(), prefix) != 0) {
    return -1;
  }
  int64_t n = 0;
  for (size_t i = prefix.size(); i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    n = n * 10 + (name[i] - '0');
  }
  return n;
}

/// The step whose checkpoint a hidden entry of a run directory belongs to (".step-N.tmp-...",
/// ".step-N.lock", ".step-N.commit", ...); -1 for anything else.
int64_t sidecar_step(const std::string& name) {
  if (name.size() < 2 || name[0] != '.') return -1;
  auto dot = name.find('.', 1);
  if (dot == std::string::npos) return -1;
  return step_of(name.substr(1, dot - 1));
}

/// `text` as a reader should see it in a message: printable ASCII, others escaped, truncated.
std::string printable(const std::string& text) {
  std::string out;
  for (unsigned char c : text) {
    if (out.size() >= 80) {
      out += "...";
      break;
    }
    if (c >= 0x20 && c < 0x7f && c != '\'') {
      out.push_back(static_cast<char>(c));
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    }
  }
  return out;
}

bool is_dir_not_link(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

/// Puts back the checkpoint a killed save left beside `path` (see restore_interrupted_commit),
/// under the path's save lock. A live save holding the lock is waited for a little: it is between
/// its two renames for milliseconds.
void restore_for_reading(const std::string& path, std::vector<std::string>& notes) {
  if (!needs_restore(path)) return;
  auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(kRestoreWaitSeconds);
  LockState holder;
  while (true) {
    std::unique_ptr<SaveLock> lock;
    try {
      lock = SaveLock::try_acquire(path, &holder);
    } catch (const Error& e) {
      throw FormatError(path +
                        ": an interrupted save left no checkpoint here but one beside it, "
                        "and it cannot be restored: " +
                        e.what());
    }
    if (lock) {
      for (const auto& n : lock->notes()) notes.push_back(n);
      for (auto& n : restore_interrupted_commit(path)) notes.push_back(std::move(n));
      return;
    }
    if (!needs_restore(path)) return;  // the live save finished its commit
    if (std::chrono::steady_clock::now() > deadline) {
      throw FormatError(path + ": a save (" + holder.owner.describe() +
                        ") is replacing this checkpoint right now; try again when it has "
                        "finished");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

}  // namespace

std::string step_dir_name(int64_t step) { return "step-" + std::to_string(step); }

std::string prepare_run_dir(const std::string& root, int64_t step) {
  if (step < 0) {
    throw UsageError(root + ": step " + std::to_string(step) + " is negative");
  }
  if (root.empty()) throw UsageError("empty run directory path");
  struct stat st {};
  if (::lstat(root.c_str(), &st) != 0) {
    std::string parent = parent_dir_of(root);
    if (!is_dir_not_link(parent) && !fs::is_directory(parent)) {
      throw UsageError(root + ": parent directory " + parent + " does not exist");
    }
    if (::mkdir(root.c_str(), 0777) != 0 && errno != EEXIST) {
      throw UsageError(root + ": cannot create the run directory: " + std::strerror(errno));
    }
    fsync_dir(parent);
  } else if (!fs::is_directory(root)) {
    throw UsageError(root + ": is a file, not a run directory");
  }
  if (is_checkpoint_dir(root)) {
    throw UsageError(root + ": is a checkpoint (it has " + kManifestName +
                     "), not a run directory; give a directory for step-N checkpoints");
  }
  return root + "/" + step_dir_name(step);
}

std::vector<std::string> publish_step(const std::string& root, int64_t step, int keep_last) {
  const std::string latest = step_dir_name(step);
  write_small_file_atomically(root + "/" + kLatestName, latest + "\n");
  crash_point("latest-written");

  std::vector<std::string> notes;
  std::map<int64_t, std::string, std::greater<>> steps;  // highest first
  std::set<int64_t> with_leftovers;
  std::time_t now = std::time(nullptr);
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const std::string full = root + "/" + name;
    if (name[0] == '.' && name.find(".deleting-") != std::string::npos) {
      remove_tree_noexcept(full);  // a rotation killed midway: already out of sight
      continue;
    }
    if (int64_t n = step_of(name); n >= 0 && is_dir_not_link(full)) steps.emplace(n, name);
    if (int64_t n = sidecar_step(name); n >= 0 && n != step) with_leftovers.insert(n);
    // A latest update killed midway (a live one's temporary is younger than a minute).
    struct stat st {};
    if (name.rfind(".latest.part-", 0) == 0 && ::lstat(full.c_str(), &st) == 0 &&
        std::difftime(now, st.st_mtime) > 60) {
      remove_tree_noexcept(full);
    }
  }
  // Dead saves of other steps: restore what they interrupted, then remove their leftovers.
  for (int64_t n : with_leftovers) {
    std::string path = root + "/" + step_dir_name(n);
    try {
      auto lock = SaveLock::try_acquire(path, nullptr);
      if (!lock) continue;  // a live save of that step
      for (const auto& note : lock->notes()) notes.push_back(note);
      for (auto& note : restore_interrupted_commit(path)) notes.push_back(std::move(note));
      for (auto& note : remove_dead_leftovers(path)) notes.push_back(std::move(note));
    } catch (const Error& e) {
      notes.push_back(std::string("could not clean up after a dead save: ") + e.what());
    }
    if (is_dir_not_link(path)) steps.emplace(n, step_dir_name(n));
  }
  if (keep_last <= 0) return notes;

  std::vector<std::string> removed;
  int kept = 0;
  for (const auto& [n, name] : steps) {
    if (n == step || kept < keep_last) {
      ++kept;
      continue;
    }
    std::string path = root + "/" + name;
    if (read_lock(path).alive) continue;  // a live save is replacing that step
    // Out of sight first: a half-deleted checkpoint must never look like one.
    std::string doomed = root + "/." + name + ".deleting-" + LockOwner::current().id;
    if (::rename(path.c_str(), doomed.c_str()) != 0) continue;
    fsync_dir(root);
    remove_tree_noexcept(doomed);
    removed.push_back(name);
  }
  if (!removed.empty()) {
    std::string note = root + ": removed";
    for (const auto& name : removed) note += " " + name;
    note += " (keeping the last " + std::to_string(keep_last) + ")";
    notes.push_back(note);
  }
  return notes;
}

ResolvedCheckpoint resolve_checkpoint(const std::string& path) {
  ResolvedCheckpoint out;
  out.path = path;
  restore_for_reading(path, out.notes);
  if (is_checkpoint_dir(path) || !is_dir_not_link(path)) return out;
  const std::string latest = path + "/" + kLatestName;
  if (!path_exists(latest)) return out;  // not a run directory: the reader says what it is

  auto text = read_small_file(latest, kMaxLatestBytes);
  if (!text) {
    throw FormatError(latest + ": cannot be read: " + std::strerror(errno));
  }
  const std::string fix = "; fix or remove it (shardload never falls back to another step)";
  if (text->size() > kMaxLatestBytes) {
    throw FormatError(latest + ": is larger than " + std::to_string(kMaxLatestBytes) +
                      " bytes, not a step name ('step-N') of " + path + fix);
  }
  std::string says = *text;
  while (!says.empty() && (says.back() == '\n' || says.back() == '\r' || says.back() == ' ')) {
    says.pop_back();
  }
  if (says.empty()) {
    throw FormatError(latest + ": is empty (a torn write?); it should name a checkpoint of " +
                      path + " as 'step-N'" + fix);
  }
  if (says.find('/') != std::string::npos || says == "." || says == "..") {
    throw FormatError(latest + ": says '" + printable(says) + "', which names something outside " +
                      path + "; it should be 'step-N'" + fix);
  }
  if (step_of(says) < 0) {
    throw FormatError(latest + ": says '" + printable(says) +
                      "', which is not a step of this run directory ('step-N')" + fix);
  }
  const std::string step_path = path + "/" + says;
  restore_for_reading(step_path, out.notes);
  struct stat st {};
  if (::lstat(step_path.c_str(), &st) != 0) {
    throw FormatError(latest + ": says '" + says + "', but " + step_path + " does not exist" + fix);
  }
  if (S_ISLNK(st.st_mode)) {
    throw FormatError(latest + ": says '" + says + "', but " + step_path +
                      " is a symbolic link, possibly outside " + path + fix);
  }
  if (!is_checkpoint_dir(step_path)) {
    throw FormatError(latest + ": says '" + says + "', but " + step_path +
                      " is not a complete checkpoint (no " + kManifestName + ")" + fix);
  }
  out.path = step_path;
  return out;
}

}  // namespace shardload
