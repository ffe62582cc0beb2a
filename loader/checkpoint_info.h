// Single-process access to a whole checkpoint: inspection, verification, conversion. Not
// collective; for tools and tests.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/chunk_record.h"
#include "io/manifest.h"
#include "io/tensor_file.h"

namespace shardload {

/// The manifest and every shard's index rows, in file order.
struct CheckpointInfo {
  Manifest manifest;
  std::vector<ChunkRecord> index;
  std::string dir;                 ///< the directory read: ROOT/step-N for a run directory ROOT
  std::vector<std::string> notes;  ///< e.g. a checkpoint an interrupted save left was restored
};

/// Reads the manifest and all index tables and validates the index. `dir` may be a run directory
/// (its `latest` is read, see resolve_checkpoint). Throws FormatError naming the file (and key).
CheckpointInfo read_checkpoint_info(const std::string& dir);

/// Outcome of verify_checkpoint: empty `problems` means every file is present, the index is
/// consistent and every chunk's checksum is right.
struct VerifyReport {
  int64_t chunks = 0;
  int64_t bytes = 0;
  std::vector<std::string> problems;  ///< each names the file and key
  std::string dir;                    ///< the directory verified (see CheckpointInfo::dir)
  std::vector<std::string> notes;     ///< see CheckpointInfo::notes
};

/// Reads every chunk of the checkpoint and checks it against its checksum. Problems with one
/// file or chunk are collected, not thrown; a missing manifest throws FormatError.
VerifyReport verify_checkpoint(const std::string& dir);

/// Assembles every tensor of the checkpoint whole, in index order of first appearance.
/// Throws FormatError when a tensor's chunks do not cover it.
TensorList read_checkpoint(const std::string& dir);

/// Writes `tensors` as a checkpoint of `num_shards` shard files (whole tensors, spread over the
/// shards to balance bytes), atomically like save(), under the path's save lock. Returns notes
/// on what was done besides writing (see SaveResult::notes).
std::vector<std::string> write_checkpoint(
    const std::string& dir, const TensorList& tensors, int num_shards, bool overwrite,
    const std::vector<std::pair<std::string, std::string>>& metadata = {});

}  // namespace shardload
