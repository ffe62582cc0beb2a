// The `.metadata` of a torch.distributed.checkpoint (DCP) directory, read without Python: the
// pickle of a `Metadata` dataclass (or Megatron-Core's MCoreMetadata), unpickled by the bounded
// restricted reader (io/pickle.h) with an allowlist of exactly DCP's classes, then checked into
// plain structs: which tensor chunks and non-tensor items the checkpoint holds, and in which
// byte range of which `__R_N.distcp` file each one lies. No LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/shape.h"
#include "core/value.h"

namespace shardload {

/// The name of DCP's metadata file, and Megatron-Core's marker of a `torch_dist` checkpoint.
inline constexpr const char* kDcpMetadataName = ".metadata";
inline constexpr const char* kMegatronMetadataName = "metadata.json";

/// Where one item lies: `_StorageInfo`.
struct DcpStorage {
  int32_t file = 0;     ///< index into DcpMetadata::files
  uint64_t offset = 0;  ///< byte position in the file
  /// Bytes of the item: a torch.save archive at `offset`; with DCP's safetensors
  /// serialization, `offset` is where the file's safetensors blob starts and `length` the
  /// chunk's raw bytes (the reader tells the two apart by the item's first bytes).
  uint64_t length = 0;
};

/// One stored chunk of a tensor (`ChunkStorageMetadata` and its `_StorageInfo`).
struct DcpChunk {
  Shape offsets;
  Shape sizes;
  DcpStorage storage;
};

/// A tensor (`TensorStorageMetadata`): its flattened key, dtype, global size and chunks in the
/// metadata's order. Empty chunks (a DTensor shard of no elements) are kept out.
struct DcpTensor {
  std::string fqn;
  DType dtype = DType::kFloat32;
  Shape size;
  std::vector<DcpChunk> chunks;
};

/// A non-tensor item (`BytesStorageMetadata`): a torch.save archive of a Python object.
struct DcpBytesItem {
  std::string fqn;
  DcpStorage storage;
};

/// One component of a planner_data path: a dict key or a list index.
struct DcpPathPart {
  bool is_index = false;
  int64_t index = 0;
  std::string key;
};

struct DcpMetadata {
  /// The files the items lie in, relative to the checkpoint directory, in first-use order.
  std::vector<std::string> files;
  /// Tensors and bytes items, in the order of `state_dict_metadata`.
  std::vector<DcpTensor> tensors;
  std::vector<DcpBytesItem> bytes_items;
  /// `planner_data` (how the flat keys nest in the saved state dict): flat key -> path. Empty
  /// when the writer did not flatten (Megatron-Core).
  std::vector<std::pair<std::string, std::vector<DcpPathPart>>> planner_data;
  /// `version` ("1.0.0"); "" for checkpoints older than the field.
  std::string version;
  /// The top object was Megatron-Core's MCoreMetadata, or carried its mcore_data.
  bool megatron = false;
};

/// Bounds of a .metadata: its bytes, and the items it may describe.
inline constexpr uint64_t kMaxDcpMetadataBytes = uint64_t{1} << 30;

/// True for the globals a DCP `.metadata` may load (module, name): DCP's metadata dataclasses,
/// `_StorageInfo`, the planner's plan classes Megatron-Core stores, Megatron-Core's
/// MCoreMetadata/MCoreSavePlan, torch.Size, the dtypes, `torch.serialization._get_layout`, the
/// memory-format enum, OrderedDict and the pathlib paths. None of them is ever called.
bool is_dcp_metadata_global(const std::string& module, const std::string& name);

/// Parses the bytes of a `.metadata` (`name` names it in errors) and checks everything that
/// does not need the data files: every tensor has a known dtype, a size of at most kMaxDims
/// non-negative dims and chunks inside it; every chunk and bytes item has exactly one storage
/// entry; storage paths are plain file names inside the directory (no '/', no "..", not the
/// metadata itself); offsets and lengths do not overflow; no key occurs twice. Chunks may not
/// overlap (checked later, with the index). Throws FormatError "In <name>: ..." naming the key.
DcpMetadata parse_dcp_metadata(std::string_view bytes, const std::string& name);

/// Reads and parses `<dir>/.metadata` (at most kMaxDcpMetadataBytes). Throws FormatError naming
/// the file; a directory with Megatron-Core's metadata.json but no .metadata is reported as an
/// incomplete checkpoint.
DcpMetadata read_dcp_metadata(const std::string& dir);

/// The flat key's path as planner_data gives it; absent: the key itself, one component.
std::vector<DcpPathPart> dcp_path_of(const DcpMetadata& metadata, const std::string& fqn);

/// The compact binary form of a DcpMetadata, for sharing it between ranks (core/wire.h).
std::string serialize_dcp_metadata(const DcpMetadata& metadata);
/// Inverse of serialize_dcp_metadata. Throws FormatError on malformed input.
DcpMetadata deserialize_dcp_metadata(std::string_view bytes);

}  // namespace shardload
