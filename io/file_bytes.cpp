#include "io/file_bytes.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>

#include "core/error.h"

namespace shardload {
namespace {

const char* file_type_name(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  return "of an unknown type";
}

}  // namespace

int open_regular_file(const std::string& path) {
  // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever. A socket
  // cannot be opened at all (ENXIO).
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    if (err == ENXIO) throw FormatError("not a regular file (a socket or a device)");
    throw FormatError(std::string("cannot open: ") + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    throw FormatError(std::string("cannot stat: ") + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw FormatError(std::string("not a regular file (") + file_type_name(st.st_mode) + ")");
  }
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) != 0) {
    const int err = errno;
    ::close(fd);
    throw FormatError(std::string("cannot clear O_NONBLOCK: ") + std::strerror(err));
  }
  return fd;
}

void check_regular_file(const std::string& path) {
  try {
    ::close(open_regular_file(path));
  } catch (...) {
    rethrow_with_context(path + ": ");
  }
}

FileBytes FileBytes::open(const std::string& path) {
  return from_descriptor(open_regular_file(path), path);
}

FileBytes FileBytes::from_descriptor(int fd, const std::string& name) {
  FileBytes f;
  f.fd_ = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    throw FormatError(name + ": fstat failed: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    throw FormatError(name + ": not a regular file (" + file_type_name(st.st_mode) + ")");
  }
  f.size_ = static_cast<uint64_t>(st.st_size);
  return f;
}

FileBytes FileBytes::from_image(std::string image) {
  FileBytes f;
  f.image_ = std::move(image);
  f.size_ = f.image_.size();
  return f;
}

FileBytes::~FileBytes() {
  if (fd_ >= 0) ::close(fd_);
  if (direct_fd_ >= 0) ::close(direct_fd_);
}

FileBytes::FileBytes(FileBytes&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      direct_fd_(std::exchange(other.direct_fd_, -1)),
      direct_refused_(other.direct_refused_.load()),
      image_(std::move(other.image_)),
      size_(std::exchange(other.size_, 0)),
      read_calls_(other.read_calls_.load()) {}

FileBytes& FileBytes::operator=(FileBytes&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    if (direct_fd_ >= 0) ::close(direct_fd_);
    fd_ = std::exchange(other.fd_, -1);
    direct_fd_ = std::exchange(other.direct_fd_, -1);
    direct_refused_ = other.direct_refused_.load();
    image_ = std::move(other.image_);
    size_ = std::exchange(other.size_, 0);
    read_calls_ = other.read_calls_.load();
  }
  return *this;
}

void FileBytes::read_at(uint64_t pos, size_t n, void* dst) const {
  if (n == 0) return;
  if (pos > size_ || n > size_ - pos) {
    throw FormatError(std::to_string(n) + " bytes at offset " + std::to_string(pos) +
                      " lie beyond the end of the file (" + std::to_string(size_) + " bytes)");
  }
  read_calls_.fetch_add(1, std::memory_order_relaxed);
  if (fd_ < 0) {
    std::memcpy(dst, image_.data() + pos, n);
    return;
  }
  auto* out = static_cast<char*>(dst);
  if (direct_fd_ >= 0 && n >= kDirectMinBytes && !direct_refused_.load(std::memory_order_relaxed) &&
      read_direct(pos, n, out)) {
    return;
  }
  read_buffered(pos, n, out);
}

void FileBytes::read_buffered(uint64_t pos, size_t n, char* out) const {
  // One pread moves at most ~2 GiB on Linux; loop over short reads and interruptions.
  constexpr size_t kMaxPerCall = size_t{1} << 30;
  while (n > 0) {
    ssize_t got = ::pread(fd_, out, std::min(n, kMaxPerCall), static_cast<off_t>(pos));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw FormatError("read of " + std::to_string(n) + " bytes at offset " + std::to_string(pos) +
                        " failed: " + std::strerror(errno));
    }
    if (got == 0) {
      throw FormatError("the file ended at offset " + std::to_string(pos) +
                        " (it shrank while open?)");
    }
    out += got;
    pos += static_cast<uint64_t>(got);
    n -= static_cast<size_t>(got);
  }
}

void FreeAligned::operator()(char* p) const { std::free(p); }

AlignedBytes aligned_bytes(size_t n, size_t align) {
  void* p = nullptr;
  if (::posix_memalign(&p, align, std::max<size_t>(n, 1)) != 0) throw std::bad_alloc();
  return AlignedBytes(static_cast<char*>(p));
}

namespace {

constexpr size_t kDirectAlign = 4096;              // covers every logical block size in use
constexpr size_t kDirectWindow = size_t{8} << 20;  // bounce buffer per reading thread

char* bounce_buffer() {
  thread_local AlignedBytes buffer;
  if (!buffer) buffer = aligned_bytes(kDirectWindow, kDirectAlign);
  return buffer.get();
}

}  // namespace

bool FileBytes::enable_direct_io() {
  if (fd_ < 0) return false;
  if (direct_fd_ >= 0) return true;
  // Re-open the descriptor itself, not the path: the same inode HDF5 (or our own checks) opened.
  const std::string self = "/proc/self/fd/" + std::to_string(fd_);
  const int dfd = ::open(self.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (dfd < 0) return false;
  struct stat a {
  }, b{};
  if (::fstat(fd_, &a) != 0 || ::fstat(dfd, &b) != 0 || a.st_dev != b.st_dev ||
      a.st_ino != b.st_ino) {
    ::close(dfd);
    return false;
  }
  direct_fd_ = dfd;
  return true;
}

bool FileBytes::read_direct(uint64_t pos, size_t n, char* out) const {
  char* window = bounce_buffer();
  const uint64_t end = pos + n;
  uint64_t at = pos & ~uint64_t{kDirectAlign - 1};
  while (at < end) {
    const uint64_t want_end = std::min<uint64_t>(
        (end + kDirectAlign - 1) & ~uint64_t{kDirectAlign - 1}, at + kDirectWindow);
    const size_t want = static_cast<size_t>(want_end - at);
    ssize_t got;
    do {
      got = ::pread(direct_fd_, window, want, static_cast<off_t>(at));
    } while (got < 0 && errno == EINTR);
    if (got < 0 && errno == EINVAL) {
      // The file system takes O_DIRECT at open but not this read: buffered from now on. Bytes
      // already copied are re-read, so the result is the same.
      direct_refused_.store(true, std::memory_order_relaxed);
      return false;
    }
    if (got < 0) {
      throw FormatError("read of " + std::to_string(n) + " bytes at offset " + std::to_string(pos) +
                        " failed: " + std::strerror(errno));
    }
    // A short read happens only at the end of the file; the bytes needed must all be there.
    const uint64_t lo = std::max(at, pos);
    const uint64_t hi = std::min<uint64_t>(at + static_cast<uint64_t>(got), end);
    if (hi <= lo) {
      throw FormatError("the file ended at offset " + std::to_string(at + got) +
                        " (it shrank while open?)");
    }
    std::memcpy(out + (lo - pos), window + (lo - at), hi - lo);
    at = hi == end ? end : at + static_cast<uint64_t>(got);
  }
  return true;
}

}  // namespace shardload
