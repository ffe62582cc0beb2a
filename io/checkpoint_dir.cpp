#include "io/checkpoint_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <vector>

#include "core/error.h"
#include "io/manifest.h"

namespace shardload {
namespace fs = std::filesystem;
namespace {

std::string parent_of(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (p.has_filename() == false) p = p.parent_path();
  fs::path parent = p.parent_path();
  return parent.empty() ? "." : parent.string();
}

std::string base_of(const std::string& path) {
  fs::path p = fs::path(path).lexically_normal();
  if (!p.has_filename()) p = p.parent_path();
  return p.filename().string();
}

void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

void check_save_target(const std::string& path, bool overwrite) {
  if (path.empty()) throw UsageError("empty checkpoint path");
  std::string parent = parent_of(path);
  struct stat st {};
  if (::stat(parent.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    throw UsageError(path + ": parent directory " + parent + " does not exist");
  }
  if (::access(parent.c_str(), W_OK) != 0) {
    throw UsageError(path + ": parent directory " + parent + " is not writable");
  }
  if (!path_exists(path)) return;
  if (!overwrite) {
    throw UsageError(path + ": already exists (ask to overwrite to replace it)");
  }
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) ||
      !path_exists(path + "/" + kManifestName)) {
    throw UsageError(path + ": exists and is not a shardload checkpoint; refusing to replace it");
  }
}

std::string make_staging_dir(const std::string& path) {
  std::string tmpl = parent_of(path) + "/." + base_of(path) + ".tmp-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) {
    throw FormatError(path + ": cannot create staging directory: " + std::strerror(errno));
  }
  return std::string(buf.data());
}

void commit_staging_dir(const std::string& staging, const std::string& path) {
  fsync_dir(staging);
  std::string parent = parent_of(path);
  if (path_exists(path)) {
#ifdef SYS_renameat2
    constexpr unsigned kRenameExchange = 2;  // RENAME_EXCHANGE
    if (::syscall(SYS_renameat2, AT_FDCWD, staging.c_str(), AT_FDCWD, path.c_str(),
                  kRenameExchange) == 0) {
      fsync_dir(parent);
      remove_tree_noexcept(staging);  // now holds the previous checkpoint
      return;
    }
#endif
    // No atomic exchange on this filesystem: move the old one aside first.
    std::string old = staging + ".old";
    if (::rename(path.c_str(), old.c_str()) != 0) {
      throw FormatError(path +
                        ": cannot move the previous checkpoint aside: " + std::strerror(errno));
    }
    if (::rename(staging.c_str(), path.c_str()) != 0) {
      int err = errno;
      ::rename(old.c_str(), path.c_str());
      throw FormatError(path +
                        ": cannot rename the new checkpoint into place: " + std::strerror(err));
    }
    fsync_dir(parent);
    remove_tree_noexcept(old);
    return;
  }
  if (::rename(staging.c_str(), path.c_str()) != 0) {
    throw FormatError(path +
                      ": cannot rename the new checkpoint into place: " + std::strerror(errno));
  }
  fsync_dir(parent);
}

void fsync_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw FormatError(path + ": cannot open for fsync: " + std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) throw FormatError(path + ": fsync failed: " + std::strerror(err));
}

std::string utc_timestamp() {
  std::time_t now = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return buf;
}

void remove_tree_noexcept(const std::string& path) noexcept {
  std::error_code ec;
  fs::remove_all(path, ec);
}

}  // namespace shardload
