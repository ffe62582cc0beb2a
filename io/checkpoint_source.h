// What a checkpoint path is: a shardload checkpoint directory, a Hugging Face directory (sharded
// with model.safetensors.index.json, or one model.safetensors), a single .safetensors file or a
// torch.save file. Found by one process; the others receive it and open the files they are given
// with the reader of the format.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/chunk_record.h"
#include "io/chunk_reader.h"
#include "io/h5/manifest.h"

namespace shardload {

struct DcpMetadata;  // io/dcp/dcp_metadata.h

/// The formats a checkpoint's files may have.
enum class SourceFormat : uint8_t {
  kShardload = 0,    ///< shard-*.h5 files and manifest.h5
  kSafetensors = 1,  ///< .safetensors files: a Hugging Face directory or one file
  kTorch = 2,        ///< one torch.save file (.pt, .pth, .bin, .ckpt)
  kDcp = 3,          ///< a torch.distributed.checkpoint directory (also Megatron-Core torch_dist)
};

/// True when `path` ends in an extension of torch.save files: .pt, .pth, .bin, or .ckpt (what
/// PyTorch Lightning writes). Case does not matter.
bool is_torch_save_path(const std::string& path);

/// "shardload", "safetensors", "torch".
std::string_view source_format_name(SourceFormat format);

/// A checkpoint as find_checkpoint_source found it, before any of its files is opened.
struct CheckpointSource {
  SourceFormat format = SourceFormat::kShardload;
  /// The directory of its files: file i is dir + "/" + manifest.shard_files[i].
  std::string dir;
  /// The manifest of a shardload checkpoint. For the other formats: shard_files (the files, in
  /// the order of their numbers) and metadata (a Hugging Face index's "metadata"); the rest is
  /// left at its defaults, shard_chunks empty.
  Manifest manifest;
  /// For kTorch: the sub-dictionary whose tensors are the checkpoint (TensorFileOptions::select).
  std::string select;
  /// What it is, for messages and `inspect`: "shardload checkpoint", "Hugging Face directory
  /// (model.safetensors.index.json)", "safetensors file", "torch.save file", ...
  std::string description;
  /// A Hugging Face index: its path, and each key's file number (only where
  /// find_checkpoint_source ran: serialize_checkpoint_source leaves the weight map out).
  std::string index_path;
  std::vector<std::pair<std::string, int32_t>> weight_map;
  /// For kDcp: the parsed .metadata (its files are manifest.shard_files; its non-tensor items
  /// are manifest.values).
  std::shared_ptr<const DcpMetadata> dcp;

  /// The path of file `file` (which must be listed).
  std::string file_path(int32_t file) const;
  /// Whether the format's rows carry checksums (only shardload checkpoints).
  bool has_checksums() const { return format == SourceFormat::kShardload; }
  /// Why reads of this source cannot be checked against checksums ("" when they can).
  std::string missing_checksums_reason() const;
};

/// Finds what `path` is and reads its listing: manifest.h5 (which wins when a directory holds
/// both), else a DCP .metadata (io/dcp/dcp_metadata.h; its non-tensor items are read as
/// values), else model.safetensors.index.json (bounded, hf_index.h), else model.safetensors; a
/// file by its extension (.safetensors; is_torch_save_path). `select` picks a sub-dictionary of
/// a torch.save file, or of a DCP checkpoint (its keys under "select.", without the prefix:
/// "model" of a {"model": ..., "optim": ...} save); for other formats it is a UsageError ("."
/// excepted). Nothing else is opened. Not collective. Throws
/// FormatError naming the path when it is none of these or its listing is invalid.
CheckpointSource find_checkpoint_source(const std::string& path, const std::string& select = "");

/// Compact binary form of a source without its weight map, for sharing it between ranks.
std::string serialize_checkpoint_source(const CheckpointSource& source);
/// Inverse of serialize_checkpoint_source. Throws FormatError on malformed input.
CheckpointSource deserialize_checkpoint_source(std::string_view bytes);

/// Opens file `file` of the source with its format's reader (ShardReader, SafetensorsReader,
/// PtReader). Throws FormatError naming the file.
std::unique_ptr<ChunkReader> open_chunk_reader(const CheckpointSource& source, int32_t file);

/// For a Hugging Face index (nothing to check otherwise): every row's key is in the weight
/// map, naming the row's file, and every key of the weight map has a row. Throws FormatError
/// naming the index file, the key and the files. Needs the weight map: call it where
/// find_checkpoint_source ran.
void check_weight_map(const CheckpointSource& source, const std::vector<ChunkRecord>& index);

}  // namespace shardload
