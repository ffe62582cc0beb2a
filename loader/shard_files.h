// The shard files of one checkpoint, opened on first use and kept open for the rest of a load.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "io/manifest.h"
#include "io/shard_file.h"

namespace shardload {

/// Opens shard files by file number. Not thread-safe while files are being opened; once every
/// file a thread needs is open, get() of those files is a lookup that several threads may make.
class ShardFiles {
 public:
  ShardFiles(std::string dir, const Manifest& manifest);
  /// The reader of shard file `file`, opened on first use. Throws FormatError naming the
  /// checkpoint for a file number the manifest does not list, or the file when it is unreadable.
  const ShardReader& get(int32_t file);
  /// The path of shard file `file` (which must be listed).
  std::string path(int32_t file) const;

 private:
  std::string dir_;
  const Manifest& manifest_;
  std::map<int32_t, ShardReader> open_;
};

}  // namespace shardload
