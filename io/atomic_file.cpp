#include "io/atomic_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "core/error.h"

namespace shardload {
namespace {

constexpr size_t kBufferBytes = size_t{1} << 20;

/// The one checked wrapper for the POSIX calls here: -1 becomes FormatError naming `path`.
int check_posix(int rc, const std::string& path, const char* what) {
  if (rc < 0) throw FormatError(path + ": " + what + ": " + std::strerror(errno));
  return rc;
}

std::string directory_of(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? "." : parent.string();
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)), dir_(directory_of(path_)) {
  const std::string name = std::filesystem::path(path_).filename().string();
  if (name.empty()) throw FormatError(path_ + ": not a file name");
  std::string tmpl = dir_ + "/." + name + ".tmp-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  fd_ = check_posix(::mkostemp(buf.data(), O_CLOEXEC), path_, "cannot create a temporary file");
  temp_ = buf.data();
  try {
    struct stat st {};
    mode_t mode;
    if (::stat(path_.c_str(), &st) == 0) {
      mode = st.st_mode & 07777;
    } else {
      const mode_t mask = ::umask(0);  // read the umask: set it and put it back
      ::umask(mask);
      mode = 0666 & ~mask;
    }
    check_posix(::fchmod(fd_, mode), temp_, "cannot set the file mode");
  } catch (...) {
    discard();
    throw;
  }
  buffer_.reserve(kBufferBytes);
}

AtomicFile::~AtomicFile() {
  if (!committed_) discard();
}

void AtomicFile::discard() noexcept {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!temp_.empty() && !committed_) ::unlink(temp_.c_str());
}

void AtomicFile::write_fully(const char* data, size_t n) {
  while (n > 0) {
    const ssize_t done = ::write(fd_, data, n);
    if (done < 0) {
      if (errno == EINTR) continue;
      check_posix(-1, temp_, "cannot write");
    }
    data += done;
    n -= static_cast<size_t>(done);
  }
}

void AtomicFile::flush() {
  write_fully(buffer_.data(), buffer_.size());
  buffer_.clear();
}

void AtomicFile::write(const void* data, size_t n) {
  if (fd_ < 0) throw FormatError(path_ + ": write after commit or failure");
  const char* p = static_cast<const char*>(data);
  if (buffer_.size() + n > kBufferBytes) flush();
  if (n >= kBufferBytes) {
    write_fully(p, n);
  } else {
    buffer_.insert(buffer_.end(), p, p + n);
  }
}

void AtomicFile::commit() {
  if (fd_ < 0) throw FormatError(path_ + ": commit after commit or failure");
  try {
    flush();
    check_posix(::fsync(fd_), temp_, "cannot flush to disk (fsync)");
    const int fd = fd_;
    fd_ = -1;
    check_posix(::close(fd), temp_, "cannot close");
    check_posix(::rename(temp_.c_str(), path_.c_str()), path_,
                ("cannot rename " + temp_ + " into place").c_str());
    committed_ = true;
  } catch (...) {
    discard();
    throw;
  }
  // The rename is durable only once the directory entry is flushed too.
  const int dir_fd = check_posix(::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC), dir_,
                                 "cannot open the directory to flush it");
  const int rc = ::fsync(dir_fd);
  const int err = errno;
  ::close(dir_fd);
  if (rc != 0) {
    throw FormatError(dir_ + ": cannot flush the directory (fsync): " + std::strerror(err));
  }
}

}  // namespace shardload
