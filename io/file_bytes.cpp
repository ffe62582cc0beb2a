#include "io/file_bytes.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "core/error.h"

namespace shardload {

FileBytes FileBytes::from_descriptor(int fd, const std::string& name) {
  FileBytes f;
  f.fd_ = fd;
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    throw FormatError(name + ": fstat failed: " + std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) throw FormatError(name + ": not a regular file");
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
}

FileBytes::FileBytes(FileBytes&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      image_(std::move(other.image_)),
      size_(std::exchange(other.size_, 0)),
      read_calls_(other.read_calls_.load()) {}

FileBytes& FileBytes::operator=(FileBytes&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
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

}  // namespace shardload
