// Writing torch.distributed.checkpoint (DCP) directories that PyTorch's own `dcp.load` (and
// `dcp_to_torch_save`) reads: each rank writes one data file `__<rank>_0.distcp` of torch.save
// archives, as DCP's FileSystemWriter does (SerializationFormat.TORCH_SAVE, one file per rank),
// and returns the metadata of what it wrote; the coordinator merges the ranks' fragments and
// writes `.metadata`, the pickle of DCP's `Metadata`. Reading is dcp_metadata.h's and DcpReader's.
#pragma once

#include <span>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/shape.h"
#include "core/value.h"
#include "io/dcp/dcp_metadata.h"

namespace shardload {

/// The `version` this writer gives `.metadata` (DCP's CURRENT_DCP_VERSION).
inline constexpr const char* kDcpWriteVersion = "1.0.0";

/// One chunk a rank writes: the part [offsets, offsets + sizes) of the global tensor `fqn` of
/// global size `global_size`. `data`: contiguous, little-endian, C-order bytes of the chunk
/// (numel(sizes) * dtype_size(dtype)), valid during the call; may be null when that is 0.
struct DcpWriteChunk {
  std::string fqn;
  DType dtype = DType::kFloat32;
  Shape global_size;
  Shape offsets;
  Shape sizes;
  const void* data = nullptr;
};

/// The name of rank `rank`'s data file: "__<rank>_0.distcp".
std::string dcp_data_file_name(int rank);

/// Writes `<dir>/__<rank>_0.distcp` (creating `dir` when missing) as DCP's FileSystemWriter
/// writes a rank's file: each value (key = its flat fqn) as a torch.save archive of the Python
/// object (a BYTES item; a Value of Kind::kPickle is the archive's data.pkl as it is), then each
/// chunk as a torch.save archive of the chunk tensor (_rebuild_tensor_v2 with a typed storage,
/// or _rebuild_tensor_v3 with an UntypedStorage for the dtypes without one), back to back. The
/// file appears complete or not at all (AtomicFile: fsync, rename, directory fsync). Returns the
/// metadata fragment describing them: files = {"__<rank>_0.distcp"}, every storage.file = 0,
/// tensors in first-use order with their chunks in the given order (empty chunks included, as
/// DCP records them), bytes items in the given order, no planner_data.
/// Collective: none; each rank calls it once for its own file, before merge_dcp_metadata.
/// Throws UsageError for a negative rank, an fqn that is empty, not UTF-8 or holds NUL, an fqn
/// given twice as a value or as both a value and a tensor, chunks of one fqn with different
/// dtypes or global sizes, a chunk outside its global size or with a rank above kMaxDims, two
/// chunks of one fqn at the same offsets, a pickle nested inside a value; FormatError naming the
/// file when it cannot be written.
DcpMetadata write_dcp_data_file(const std::string& dir, int rank,
                                std::span<const DcpWriteChunk> chunks, const ValueList& values);

/// Merges the ranks' fragments into the metadata of the whole checkpoint: the files of each
/// fragment are appended in fragment order (storage.file renumbered), the chunks of one fqn are
/// joined and sorted by their offsets (lexicographically), tensors and bytes items keep their
/// first-use order, planner_data entries are joined, version is kDcpWriteVersion.
/// Collective: none; the coordinator calls it with every rank's fragment (in rank order).
/// Throws UsageError for a file named by two fragments, a storage.file out of range, a tensor
/// whose fragments disagree on dtype or size, two chunks of one fqn at the same offsets or
/// overlapping, a bytes item in two fragments or with the fqn of a tensor, planner_data entries
/// that disagree.
DcpMetadata merge_dcp_metadata(std::vector<DcpMetadata> fragments);

/// Writes `<dir>/.metadata` atomically (AtomicFile: temporary, fsync, rename, directory fsync)
/// as the pickle DCP writes: `Metadata(state_dict_metadata={fqn: TensorStorageMetadata(
/// TensorProperties(dtype, ...), torch.Size, [ChunkStorageMetadata(offsets, sizes)]) or
/// BytesStorageMetadata()}, planner_data={fqn: path tuple}, storage_data={MetadataIndex(fqn,
/// offsets, chunk position) or MetadataIndex(fqn): _StorageInfo(relative_path, offset,
/// length)}, storage_meta=None, version=kDcpWriteVersion)`. planner_data gives each fqn its
/// path from `metadata.planner_data`, or (fqn,) when it has none. TensorProperties records the
/// contiguous strides of the first chunk's sizes, as DCP records the strides of a written chunk.
/// Collective: none; the coordinator calls it once, after every rank's data file is complete.
/// Throws UsageError for a file name that is empty or holds '/', a storage.file out of range, an
/// fqn given twice, two chunks of one fqn at the same offsets, a chunk outside its tensor, an
/// empty planner_data path; FormatError naming the file when it cannot be written.
void write_dcp_metadata(const std::string& dir, const DcpMetadata& metadata);

}  // namespace shardload
