// Single files that appear complete or not at all: written under a unique temporary name in the
// target's directory, flushed to stable storage, renamed over the target, directory flushed.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace shardload {

/// A file being written to replace `path` atomically. Until commit() nothing is visible at
/// `path` (an existing file there stays as it was); a process killed at any moment leaves the
/// old file or the new one, complete, at `path` (plus, at worst, an orphaned temporary
/// ".NAME.tmp-XXXXXX" beside it). Destroying an uncommitted AtomicFile removes the temporary.
/// Not thread-safe; one writer per object.
class AtomicFile {
 public:
  /// Creates the temporary `.NAME.tmp-XXXXXX` (mkstemp) in the directory of `path`, with the
  /// mode an existing file at `path` has, else 0666 less the umask. Throws FormatError naming
  /// `path` when it cannot.
  explicit AtomicFile(std::string path);
  /// Removes the temporary unless committed; never throws.
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Appends `n` bytes (buffered). Throws FormatError naming `path` (disk full, I/O error).
  void write(const void* data, size_t n);
  /// Flushes the buffer, fsyncs the file, renames it over `path` and fsyncs the directory.
  /// Throws FormatError naming `path`; the temporary is then removed and `path` untouched.
  void commit();

  /// The path being replaced.
  const std::string& path() const { return path_; }
  /// The temporary file's path.
  const std::string& temp_path() const { return temp_; }

 private:
  void flush();
  void write_fully(const char* data, size_t n);
  void discard() noexcept;

  std::string path_;
  std::string dir_;
  std::string temp_;
  int fd_ = -1;
  std::vector<char> buffer_;
  bool committed_ = false;
};

}  // namespace shardload
