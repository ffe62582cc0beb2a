// Single-process access to a whole checkpoint: inspection, verification, conversion. Not
// collective; for tools and tests.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/chunk_record.h"
#include "io/checkpoint_source.h"
#include "io/h5/manifest.h"
#include "io/tensor_file.h"

namespace shardload {

/// A checkpoint's listing and every file's index rows, in file order.
struct CheckpointInfo {
  /// A shardload checkpoint's manifest; for other formats its files and metadata only
  /// (CheckpointSource::manifest).
  Manifest manifest;
  std::vector<ChunkRecord> index;
  std::string dir;  ///< the checkpoint read: ROOT/step-N for a run directory ROOT, else the path
  std::vector<std::string> notes;  ///< e.g. a checkpoint an interrupted save left was restored
  /// What the path is: format, description ("Hugging Face directory (...)"), files.
  CheckpointSource source;
};

/// Reads the listing and all index rows and validates the index. `path` may be a run directory
/// (its `latest` is read, see resolve_checkpoint), a shardload checkpoint, a Hugging Face
/// directory, a .safetensors or a torch.save file (`select`: its sub-dictionary; see
/// find_checkpoint_source). Throws FormatError naming the file (and key).
CheckpointInfo read_checkpoint_info(const std::string& path, const std::string& select = "");

/// Outcome of verify_checkpoint: empty `problems` means every file is present, the index is
/// consistent and every chunk's checksum is right (for formats without checksums: every
/// tensor's bytes lie in its file, bool values are 0 or 1, a Hugging Face index matches its
/// files; `checksums_reason` then says why nothing more was checked).
struct VerifyReport {
  int64_t chunks = 0;
  int64_t bytes = 0;
  std::vector<std::string> problems;  ///< each names the file and key
  std::string dir;                    ///< the checkpoint verified (see CheckpointInfo::dir)
  std::vector<std::string> notes;     ///< see CheckpointInfo::notes
  std::string checksums_reason;       ///< "" when checksums were checked
};

/// Reads every chunk of the checkpoint (any format read_checkpoint_info reads) and checks it
/// against its checksum. Problems with one file or chunk are collected, not thrown; a path that
/// is no checkpoint throws FormatError.
VerifyReport verify_checkpoint(const std::string& dir);

/// Assembles every tensor of the checkpoint (any format read_checkpoint_info reads) whole, in
/// index order of first appearance. Throws FormatError when a tensor's chunks do not cover it.
TensorList read_checkpoint(const std::string& dir, const std::string& select = "");

/// Writes `tensors` as a checkpoint of `num_shards` shard files (whole tensors, spread over the
/// shards to balance bytes), atomically like save(), under the path's save lock. Returns notes
/// on what was done besides writing (see SaveResult::notes).
std::vector<std::string> write_checkpoint(
    const std::string& dir, const TensorList& tensors, int num_shards, bool overwrite,
    const std::vector<std::pair<std::string, std::string>>& metadata = {});

}  // namespace shardload
