// The files of one checkpoint, whatever their format, opened on first use and kept open for the
// rest of a load: the per-load source of chunk readers.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "io/checkpoint_source.h"
#include "io/chunk_reader.h"

namespace shardload {

/// Opens a checkpoint's files by file number, each with the reader of the source's format
/// (io/checkpoint_source.h). Not thread-safe while files are being opened; once every file a
/// thread needs is open, get() of those files is a lookup that several threads may make.
class ShardFiles {
 public:
  /// With `direct_io`, every file opened reads its large ranges around the page cache where its
  /// file system allows (ChunkReader::enable_direct_io).
  explicit ShardFiles(CheckpointSource source, bool direct_io = false);
  /// The reader of file `file`, opened on first use. Throws FormatError naming the checkpoint
  /// for a file number the source does not list, or the file when it is unreadable.
  const ChunkReader& get(int32_t file);
  /// The path of file `file` (which must be listed).
  std::string path(int32_t file) const { return source_.file_path(file); }
  /// The source the files belong to.
  const CheckpointSource& source() const { return source_; }

 private:
  CheckpointSource source_;
  bool direct_io_ = false;
  std::map<int32_t, std::unique_ptr<ChunkReader>> open_;
};

}  // namespace shardload
