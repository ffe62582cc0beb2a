#include "io/commit/commit_journal.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <sstream>

#include "core/error.h"
#include "io/commit/checkpoint_dir.h"

namespace shardload {
namespace fs = std::filesystem;
namespace {

constexpr const char* kJournalHeader = "shardload-commit-journal 1";
constexpr size_t kMaxJournalBytes = 4096;

/// ".NAME.tmp-XXXXXX" as make_staging_dir makes it (6 characters of [A-Za-z0-9]).
bool is_staging_name(const std::string& name, const std::string& base) {
  std::string prefix = "." + base + ".tmp-";
  if (name.size() != prefix.size() + 6 || name.compare(0, prefix.size(), prefix) != 0) {
    return false;
  }
  return std::all_of(name.begin() + static_cast<std::ptrdiff_t>(prefix.size()), name.end(),
                     [](unsigned char c) { return std::isalnum(c) != 0; });
}

/// `prefix` followed by 16 lowercase hexadecimal digits (a LockOwner id).
bool is_id_name(const std::string& name, const std::string& prefix) {
  if (name.size() != prefix.size() + 16 || name.compare(0, prefix.size(), prefix) != 0) {
    return false;
  }
  return std::all_of(name.begin() + static_cast<std::ptrdiff_t>(prefix.size()), name.end(),
                     [](unsigned char c) { return std::isxdigit(c) != 0; });
}

bool is_aside_name(const std::string& name, const std::string& base) {
  return name.size() > 4 && name.compare(name.size() - 4, 4, ".old") == 0 &&
         is_staging_name(name.substr(0, name.size() - 4), base);
}

std::string errno_text(int err) { return std::strerror(err); }

/// Entries of a directory (names only); empty when it cannot be read.
std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  return names;
}

double mtime_of(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return 0;
  return static_cast<double>(st.st_mtim.tv_sec) + 1e-9 * static_cast<double>(st.st_mtim.tv_nsec);
}

}  // namespace

std::string commit_journal_path(const std::string& path) {
  return sibling_path(path, "." + base_name_of(path) + ".commit");
}

std::optional<CommitJournal> read_commit_journal(const std::string& path) {
  auto text = read_small_file(commit_journal_path(path), kMaxJournalBytes);
  if (!text || text->size() > kMaxJournalBytes) return std::nullopt;
  std::istringstream in(*text);
  std::string line;
  if (!std::getline(in, line) || line != kJournalHeader) return std::nullopt;
  CommitJournal j;
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string key = line.substr(0, eq), value = line.substr(eq + 1);
    if (key == "staging") j.staging = value;
    if (key == "aside") j.aside = value;
    if (key == "owner") j.owner = value;
  }
  const std::string base = base_name_of(path);
  if (!is_staging_name(j.staging, base) || j.aside != j.staging + ".old") return std::nullopt;
  return j;
}

void write_commit_journal(const std::string& path, const CommitJournal& j) {
  std::ostringstream s;
  s << kJournalHeader << "\ntarget=" << base_name_of(path) << "\nstaging=" << j.staging
    << "\naside=" << j.aside << "\nowner=" << j.owner << "\n";
  write_small_file_atomically(commit_journal_path(path), s.str());
}

bool needs_restore(const std::string& path) {
  if (path_exists(path)) return false;
  if (path_exists(commit_journal_path(path))) return true;
  const std::string base = base_name_of(path);
  for (const auto& name : list_dir(parent_dir_of(path))) {
    if (is_aside_name(name, base)) return true;
  }
  return false;
}

std::vector<std::string> restore_interrupted_commit(const std::string& path) {
  std::vector<std::string> notes;
  if (path_exists(path)) return notes;  // whatever remains beside it is a dead save's leftover
  const std::string parent = parent_dir_of(path);
  const std::string base = base_name_of(path);
  std::string fresh, old, who = "an interrupted save";
  if (auto journal = read_commit_journal(path)) {
    fresh = sibling_path(path, journal->staging);
    old = sibling_path(path, journal->aside);
    if (!journal->owner.empty()) who += " (" + journal->owner + ")";
  } else {
    // No journal (or a torn one): the newest previous checkpoint moved aside, if any.
    double newest = -1;
    for (const auto& name : list_dir(parent)) {
      std::string candidate = sibling_path(path, name);
      if (is_aside_name(name, base) && is_checkpoint_dir(candidate) &&
          mtime_of(candidate) > newest) {
        newest = mtime_of(candidate);
        old = candidate;
        fresh = candidate.substr(0, candidate.size() - 4);
      }
    }
  }
  std::string restored, dropped;
  if (!fresh.empty() && is_checkpoint_dir(fresh)) {
    restored = fresh;
    dropped = old;
  } else if (!old.empty() && is_checkpoint_dir(old)) {
    restored = old;
    dropped = fresh;
  }
  if (!restored.empty()) {
    if (::rename(restored.c_str(), path.c_str()) != 0) {
      throw FormatError(path + ": " + who + " left no checkpoint here and a complete one in " +
                        restored + ", which cannot be moved back: " + errno_text(errno) +
                        " (move it to " + path + " by hand)");
    }
    fsync_dir(parent);
    notes.push_back(path + ": restored the " +
                    std::string(restored == fresh ? "new checkpoint" : "previous checkpoint") +
                    " that " + who + " had left in " + restored);
    if (!dropped.empty() && path_exists(dropped)) {
      remove_tree_noexcept(dropped);
      notes.back() += "; removed " + dropped;
    }
  }
  if (::unlink(commit_journal_path(path).c_str()) == 0) fsync_dir(parent);
  return notes;
}

std::vector<std::string> remove_dead_leftovers(const std::string& path) {
  const std::string parent = parent_dir_of(path);
  const std::string base = base_name_of(path);
  const std::string journal = "." + base + ".commit";
  const std::string lock_prefix = "." + base + ".lock.";
  std::vector<std::string> removed;
  std::time_t now = std::time(nullptr);
  for (const auto& name : list_dir(parent)) {
    std::string full = parent + "/" + name;
    bool dead = is_staging_name(name, base) || is_aside_name(name, base) || name == journal ||
                (name.rfind(journal + ".part-", 0) == 0 && name.size() == journal.size() + 12) ||
                is_id_name(name, lock_prefix + "dead-");
    // Lock temporaries live for microseconds while a lock is taken; give them a minute.
    if (is_id_name(name, lock_prefix) && std::difftime(now, mtime_of(full)) > 60) dead = true;
    if (!dead) continue;
    remove_tree_noexcept(full);
    removed.push_back(name);
  }
  if (removed.empty()) return {};
  fsync_dir(parent);
  std::string note = path + ": removed " + std::to_string(removed.size()) +
                     " leftover(s) of dead saves beside it:";
  for (const auto& n : removed) note += " " + n;
  return {note};
}

}  // namespace shardload
