// Constants of the checkpoint format (docs/FORMAT.md) and the limits every reader applies to
// untrusted files before it allocates or loops by what they declare.
#pragma once

#include <cstdint>

namespace shardload {

/// Format name written into every shard file and the manifest.
inline constexpr const char* kFormatName = "shardload";
/// The version this library writes (2: packed small chunks, `data_offset` column) and the
/// oldest it reads.
inline constexpr int64_t kFormatVersion = 2;
inline constexpr int64_t kOldestFormatVersion = 1;

/// Name of the manifest file inside a checkpoint directory: written last, its presence is the
/// commit marker (io/commit/ looks for it).
inline constexpr const char* kManifestName = "manifest.h5";

/// Limits on what a file may declare (DESIGN.md §8: bounded before used).
inline constexpr int64_t kMaxIndexRows = int64_t{1} << 22;     ///< rows of one shard's index
inline constexpr int64_t kMaxStringBytes = int64_t{64} << 10;  ///< keys, names, attributes
inline constexpr int64_t kMaxShardFiles = int64_t{1} << 20;    ///< shard files of a checkpoint
inline constexpr int64_t kMaxMetadataEntries = int64_t{1} << 16;
inline constexpr int64_t kMaxShardNameBytes = 255;  ///< a plain file name
inline constexpr uint64_t kMinBlockBytes = 64;
inline constexpr uint64_t kMaxBlockBytes = uint64_t{1} << 30;

/// What this library writes: blocks of 1 MiB get their own checksum; chunks below 1 MiB (one
/// block) are packed back to back into shared datasets of at most 32 MiB. A dataset of its own
/// costs a load one HDF5 open (~40 µs here), as long as reading 250 KiB.
inline constexpr uint64_t kDefaultBlockBytes = uint64_t{1} << 20;
inline constexpr uint64_t kDefaultPackThreshold = uint64_t{1} << 20;
inline constexpr uint64_t kDefaultPackBytes = uint64_t{32} << 20;

}  // namespace shardload
