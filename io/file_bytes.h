// The bytes of one open shard file, read by offset: a POSIX descriptor (pread) or an in-memory
// image. Reads are bounds-checked against the real size and safe to run from several threads.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace shardload {

class FileBytes {
 public:
  FileBytes() = default;
  /// Takes ownership of `fd` (closed by the destructor); the size comes from fstat.
  static FileBytes from_descriptor(int fd, const std::string& name);
  /// Holds `image` as the file's bytes.
  static FileBytes from_image(std::string image);
  ~FileBytes();
  FileBytes(FileBytes&& other) noexcept;
  FileBytes& operator=(FileBytes&& other) noexcept;
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;

  /// The file's real size in bytes.
  uint64_t size() const { return size_; }
  /// Copies bytes [pos, pos + n) into dst. Throws FormatError when the range does not lie inside
  /// the file or the read fails or comes up short. Thread-safe (pread does not move an offset).
  void read_at(uint64_t pos, size_t n, void* dst) const;
  /// Reads made so far (one per read_at call that moved bytes), for tests and benchmarks.
  uint64_t read_calls() const { return read_calls_.load(std::memory_order_relaxed); }

 private:
  int fd_ = -1;
  std::string image_;
  uint64_t size_ = 0;
  mutable std::atomic<uint64_t> read_calls_{0};
};

}  // namespace shardload
