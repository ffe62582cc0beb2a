#include "io/checkpoint_source.h"

#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/value.h"
#include "core/wire.h"
#include "io/dcp/dcp_metadata.h"
#include "io/dcp/dcp_reader.h"
#include "io/file_bytes.h"
#include "io/file_system.h"
#include "io/h5/shard_file.h"
#include "io/key_text.h"
#include "io/pt/pt_reader.h"
#include "io/safetensors/hf_index.h"
#include "io/safetensors/safetensors_reader.h"

namespace shardload {
namespace {

/// Lower-case extension of a file name (".safetensors"), "" when none.
std::string extension_of(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

/// stat() following symbolic links (a Hugging Face cache's snapshots are links to blobs).
bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

/// The tensors and bytes items of `md` under `select` (flat keys starting "select."), renamed
/// without it; their files stay numbered as they were. UsageError when nothing is under it.
std::shared_ptr<const DcpMetadata> select_dcp_keys(std::shared_ptr<DcpMetadata> md,
                                                   const std::string& select,
                                                   const std::string& path) {
  const std::string prefix = select + ".";
  auto strip = [&](std::string& key) {
    if (!key.starts_with(prefix)) return false;
    key = key.substr(prefix.size());
    return true;
  };
  std::vector<DcpTensor> tensors;
  for (auto& t : md->tensors) {
    if (strip(t.fqn)) tensors.push_back(std::move(t));
  }
  std::vector<DcpBytesItem> items;
  for (auto& b : md->bytes_items) {
    if (strip(b.fqn)) items.push_back(std::move(b));
  }
  if (tensors.empty() && items.empty()) {
    throw UsageError(path + ": --select " + quote_text(select) +
                     " names no sub-dictionary of the checkpoint (no key starts with " +
                     quote_text(prefix) + ")");
  }
  md->tensors = std::move(tensors);
  md->bytes_items = std::move(items);
  md->planner_data.clear();  // the values were read (and nested) before the selection
  return md;
}

}  // namespace

bool is_torch_save_path(const std::string& path) {
  const std::string ext = extension_of(path);
  return ext == ".pt" || ext == ".pth" || ext == ".bin" || ext == ".ckpt";
}

std::string_view source_format_name(SourceFormat format) {
  switch (format) {
    case SourceFormat::kShardload:
      return "shardload";
    case SourceFormat::kSafetensors:
      return "safetensors";
    case SourceFormat::kTorch:
      return "torch";
    case SourceFormat::kDcp:
      return "dcp";
  }
  return "unknown";
}

std::string CheckpointSource::file_path(int32_t file) const {
  const std::string& name = manifest.shard_files[static_cast<size_t>(file)];
  return dir == "." ? name : dir + "/" + name;
}

std::string CheckpointSource::missing_checksums_reason() const {
  switch (format) {
    case SourceFormat::kShardload:
      return "";
    case SourceFormat::kSafetensors:
      return "safetensors files carry no checksums";
    case SourceFormat::kTorch:
      return "torch.save files carry no per-tensor checksums";
    case SourceFormat::kDcp:
      return "torch.distributed.checkpoint files carry no checksums";
  }
  return "";
}

CheckpointSource find_checkpoint_source(const std::string& path, const std::string& select) {
  CheckpointSource s;
  const std::string ext = extension_of(path);
  const bool file_kind = ext == ".safetensors" || is_torch_save_path(path);
  if (file_kind && !path_exists(path)) throw FormatError(path + ": no such file");
  // A FIFO, a socket or a device: refused at once (opening it could block forever).
  if (path_exists(path) && !is_directory(path)) check_regular_file(path);
  if (is_regular_file(path)) {
    if (ext == ".safetensors") {
      s.format = SourceFormat::kSafetensors;
      s.description = "safetensors file";
    } else if (is_torch_save_path(path)) {
      s.format = SourceFormat::kTorch;
      s.description = "torch.save file";
    } else {
      read_manifest(path);  // throws: "not a checkpoint directory (it is a file)"
    }
    s.dir = parent_dir_of(path);
    s.manifest.shard_files = {base_name_of(path)};
  } else if (is_directory(path) && !path_exists(path + "/" + kManifestName) &&
             (path_exists(path + "/" + kDcpMetadataName) ||
              path_exists(path + "/" + kMegatronMetadataName))) {
    s.dir = path;
    s.format = SourceFormat::kDcp;
    auto md = std::make_shared<DcpMetadata>(read_dcp_metadata(path));
    s.manifest.shard_files = md->files;
    s.manifest.values = read_dcp_values(path, *md);
    const bool megatron = md->megatron || path_exists(path + "/" + kMegatronMetadataName);
    s.description = std::string(megatron ? "Megatron-Core torch_dist checkpoint"
                                         : "torch.distributed.checkpoint directory") +
                    " (" + std::to_string(md->files.size()) + " data file(s))";
    s.dcp = std::move(md);
  } else if (is_directory(path) && !path_exists(path + "/" + kManifestName)) {
    s.dir = path;
    s.format = SourceFormat::kSafetensors;
    if (path_exists(path + "/" + kHfIndexName)) {
      s.index_path = path + "/" + kHfIndexName;
      HfIndex index = read_hf_index(s.index_path);
      s.manifest.shard_files = std::move(index.files);
      s.manifest.metadata = std::move(index.metadata);
      s.weight_map = std::move(index.weight_map);
      s.description = std::string("Hugging Face directory (") + kHfIndexName + ", " +
                      std::to_string(s.manifest.shard_files.size()) + " file(s))";
    } else if (path_exists(path + "/" + kHfSingleName)) {
      s.manifest.shard_files = {kHfSingleName};
      s.description = std::string("Hugging Face directory (") + kHfSingleName + ")";
    } else {
      try {
        read_manifest(path);
      } catch (const FormatError& e) {
        throw FormatError(std::string(e.what()) + ", nor a Hugging Face directory (no " +
                          kHfIndexName + " or " + kHfSingleName + ")");
      }
    }
  } else {
    s.dir = path;
    s.manifest = read_manifest(path);  // throws naming the path when it is no checkpoint
    s.description = "shardload checkpoint";
  }
  if (!select.empty() && select != "." && s.format == SourceFormat::kDcp) {
    // A sub-dictionary of the saved state ({"model": ..., "optim": ...}): its keys, without
    // the prefix.
    auto md = std::make_shared<DcpMetadata>(*s.dcp);
    s.dcp = select_dcp_keys(std::move(md), select, path);
    ValueList kept;
    const std::string prefix = select + ".";
    for (auto& [key, value] : s.manifest.values) {
      if (key.starts_with(prefix)) kept.emplace_back(key.substr(prefix.size()), std::move(value));
    }
    s.manifest.values = std::move(kept);
    s.description += ", its " + quote_text(select);
  } else if (!select.empty() && select != "." && s.format != SourceFormat::kTorch) {
    throw UsageError(path + ": --select " + quote_text(select) +
                     " picks a sub-dictionary of a .pt checkpoint; this is a " + s.description);
  }
  if (s.format == SourceFormat::kTorch) s.select = select;
  return s;
}

std::string serialize_checkpoint_source(const CheckpointSource& s) {
  WireWriter w;
  w.u64(static_cast<uint64_t>(s.format));
  w.str(s.dir);
  w.str(s.select);
  w.str(s.description);
  w.str(s.index_path);
  if (s.format == SourceFormat::kShardload) {
    w.str(serialize_manifest(s.manifest));
  } else if (s.format == SourceFormat::kDcp) {
    w.str(serialize_dcp_metadata(*s.dcp));
    w.str(encode_values(s.manifest.values));
  } else {
    w.u64(s.manifest.shard_files.size());
    for (const auto& f : s.manifest.shard_files) w.str(f);
    w.u64(s.manifest.metadata.size());
    for (const auto& [k, v] : s.manifest.metadata) {
      w.str(k);
      w.str(v);
    }
  }
  return w.take();
}

CheckpointSource deserialize_checkpoint_source(std::string_view bytes) {
  WireReader r(bytes, "serialized checkpoint source");
  CheckpointSource s;
  const uint64_t format = r.u64("format");
  if (format > static_cast<uint64_t>(SourceFormat::kDcp)) r.fail("an unknown format");
  s.format = static_cast<SourceFormat>(format);
  s.dir = r.str("directory");
  s.select = r.str("selection");
  s.description = r.str("description");
  s.index_path = r.str("index path");
  if (s.format == SourceFormat::kShardload) {
    s.manifest = deserialize_manifest(r.str("manifest"));
  } else if (s.format == SourceFormat::kDcp) {
    auto md = std::make_shared<DcpMetadata>(deserialize_dcp_metadata(r.str("DCP metadata")));
    s.manifest.shard_files = md->files;
    s.manifest.values = decode_values(r.str("values"), "serialized checkpoint source");
    s.dcp = std::move(md);
  } else {
    for (uint64_t n = r.count(8, "file count"); n > 0; --n) {
      s.manifest.shard_files.push_back(r.str("file name"));
    }
    for (uint64_t n = r.count(16, "metadata count"); n > 0; --n) {
      std::string k = r.str("metadata key");
      s.manifest.metadata.emplace_back(std::move(k), r.str("metadata value"));
    }
  }
  r.finish();
  return s;
}

std::unique_ptr<ChunkReader> open_chunk_reader(const CheckpointSource& source, int32_t file) {
  const std::string path = source.file_path(file);
  switch (source.format) {
    case SourceFormat::kShardload:
      return std::make_unique<ShardReader>(path);
    case SourceFormat::kSafetensors:
      return std::make_unique<SafetensorsReader>(path);
    case SourceFormat::kTorch:
      return std::make_unique<PtReader>(path, source.select);
    case SourceFormat::kDcp:
      return std::make_unique<DcpReader>(path, source.dcp, file);
  }
  throw FormatError("In " + path + ": unknown format");
}

void check_weight_map(const CheckpointSource& source, const std::vector<ChunkRecord>& index) {
  if (source.index_path.empty()) return;
  const auto& files = source.manifest.shard_files;
  std::unordered_map<std::string_view, int32_t> file_of;
  file_of.reserve(source.weight_map.size());
  for (const auto& [key, file] : source.weight_map) file_of.emplace(key, file);
  std::unordered_set<std::string_view> held;
  held.reserve(index.size());
  for (const ChunkRecord& row : index) {
    held.insert(row.key);
    auto it = file_of.find(row.key);
    if (it == file_of.end()) {
      throw FormatError("In " + source.file_path(row.file) + ": key " + quote_text(row.key) +
                        " is not in the weight_map of " + source.index_path);
    }
    if (it->second != row.file) {
      throw FormatError("In " + source.index_path + ": key " + quote_text(row.key) +
                        ": the weight_map names " + files[static_cast<size_t>(it->second)] +
                        ", but " + source.file_path(row.file) + " holds it");
    }
  }
  for (const auto& [key, file] : source.weight_map) {
    if (!held.count(key)) {
      throw FormatError("In " + source.index_path + ": key " + quote_text(key) +
                        ": the weight_map names " + files[static_cast<size_t>(file)] + ", but " +
                        source.file_path(file) + " holds no such tensor");
    }
  }
}

}  // namespace shardload
