// The bytes of one open shard file, read by offset: a POSIX descriptor (pread) or an in-memory
// image. Reads are bounds-checked against the real size and safe to run from several threads.
// Optionally, large reads bypass the page cache (O_DIRECT, through an aligned bounce buffer).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace shardload {

/// Memory from aligned_bytes(), freed with std::free.
struct FreeAligned {
  void operator()(char* p) const;
};
using AlignedBytes = std::unique_ptr<char, FreeAligned>;

/// `n` bytes at a multiple of `align` (a power of two, at least sizeof(void*)): read buffers
/// the kernel copies into at full speed (a page) or that direct I/O needs. Throws
/// std::bad_alloc.
AlignedBytes aligned_bytes(size_t n, size_t align);

/// Opens `path` read-only without blocking: O_NONBLOCK, so that opening a FIFO (which waits for
/// a writer) or a device cannot hang, then fstat on that descriptor, which must be a regular
/// file; O_NONBLOCK is then cleared. Returns the descriptor (the caller closes it). Throws
/// FormatError "cannot open: <reason>" or "not a regular file (a FIFO)" (a socket, a character
/// device, ...) at once; the caller adds the path.
int open_regular_file(const std::string& path);

/// open_regular_file, closed again: for paths a library opens itself (HDF5). Throws
/// FormatError "<path>: ..." naming the path.
void check_regular_file(const std::string& path);

class FileBytes {
 public:
  FileBytes() = default;
  /// Takes ownership of `fd` (closed by the destructor); the size comes from fstat.
  static FileBytes from_descriptor(int fd, const std::string& name);
  /// The regular file at `path`, opened without blocking (open_regular_file). Throws
  /// FormatError as open_regular_file does.
  static FileBytes open(const std::string& path);
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
  /// Opens a second descriptor of the same file (the same inode, checked) with O_DIRECT: from
  /// then on reads of at least kDirectMinBytes bypass the page cache, read in aligned windows
  /// and copied out. Returns false, changing nothing, where the file system refuses O_DIRECT
  /// (tmpfs) or the file is an in-memory image. A direct read the kernel refuses (EINVAL) falls
  /// back to buffered reads for the rest of the file's life.
  bool enable_direct_io();
  /// Whether large reads go around the page cache.
  bool direct_io() const { return direct_fd_ >= 0 && !direct_refused_.load(); }
  static constexpr size_t kDirectMinBytes = size_t{1} << 20;

  /// Reads made so far (one per read_at call that moved bytes), for tests and benchmarks.
  uint64_t read_calls() const { return read_calls_.load(std::memory_order_relaxed); }

 private:
  void read_buffered(uint64_t pos, size_t n, char* out) const;
  /// false when the kernel refused the direct read (the caller falls back to read_buffered).
  bool read_direct(uint64_t pos, size_t n, char* out) const;

  int fd_ = -1;
  int direct_fd_ = -1;
  mutable std::atomic<bool> direct_refused_{false};
  std::string image_;
  uint64_t size_ = 0;
  mutable std::atomic<uint64_t> read_calls_{0};
};

}  // namespace shardload
