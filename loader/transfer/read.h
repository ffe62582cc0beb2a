// The read stage of the transfer: a message's pieces from the shard files into one buffer, each
// at its aligned position, every byte verified against the index's checksums. Runs on reader
// threads (read_stage.h): everything that can touch a file's metadata is done beforehand by
// prepare(), on the driver thread.
#pragma once

#include <cstdint>
#include <vector>

#include "core/chunk_record.h"
#include "loader/shard_files.h"
#include "sharding/load_plan.h"

namespace shardload {

class MessageReader {
 public:
  MessageReader(const LoadPlan& plan, const std::vector<ChunkRecord>& index, ShardFiles& files,
                bool verify_checksums)
      : plan_(plan), index_(index), files_(files), verify_(verify_checksums) {}

  /// Opens the files of `m` and checks every chunk it reads (driver thread, before its read).
  void prepare(const Message& m);

  /// Reads every piece of `m` into `bytes`, each at its aligned position, or (a non-null entry of
  /// `in_place`, one per piece of `m`) straight into the tensor bytes given. Runs of pieces that
  /// are whole chunks of one file go in one call, which reads chunks adjacent in the file with
  /// one pread (packed small tensors); the pieces of a run are then moved apart to their aligned
  /// positions. Returns the bytes read. Throws FormatError (naming the file and key) on a chunk
  /// that fails its checksum or cannot be read; `bytes` then holds garbage.
  int64_t read(const Message& m, char* bytes, const std::vector<char*>& in_place = {}) const;

 private:
  /// Reads `piece`, a part of chunk `row`, into `into` (verified).
  void read_part(const Piece& piece, const ChunkRecord& row, char* into) const;

  const LoadPlan& plan_;
  const std::vector<ChunkRecord>& index_;
  ShardFiles& files_;
  const bool verify_;
};

}  // namespace shardload
