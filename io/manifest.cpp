#include "io/manifest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/checkpoint_dir.h"
#include "io/hdf5.h"
#include "io/shard_file.h"

namespace shardload {

void write_manifest(const std::string& dir, const Manifest& m) {
  std::string path = dir + "/" + kManifestName;
  h5::silence_errors();
  try {
    h5::Handle f =
        h5::file_handle(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    h5::write_attr(f.get(), "format", std::string(kFormatName));
    h5::write_attr(f.get(), "format_version", m.format_version);
    h5::write_attr(f.get(), "library_version", m.library_version);
    h5::write_attr(f.get(), "num_ranks", m.num_ranks);
    h5::write_attr(f.get(), "created", m.created);
    h5::write_strings(f.get(), "shards", m.shard_files);
    h5::write_i64(f.get(), "shard_chunks", m.shard_chunks);
    h5::Handle meta =
        h5::group_handle(H5Gcreate2(f.get(), "metadata", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    std::vector<std::string> keys, values;
    for (const auto& [k, v] : m.metadata) {
      keys.push_back(k);
      values.push_back(v);
    }
    h5::write_strings(meta.get(), "keys", keys);
    h5::write_strings(meta.get(), "values", values);
    meta.reset();
    SHARDLOAD_H5(H5Fflush(f.get(), H5F_SCOPE_GLOBAL));
    f.close("H5Fclose");
    fsync_file(path);
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

Manifest read_manifest(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) throw FormatError(dir + ": no such checkpoint directory");
  if (!S_ISDIR(st.st_mode)) {
    throw FormatError(dir + ": not a checkpoint directory (it is a file)");
  }
  std::string path = dir + "/" + kManifestName;
  if (::access(path.c_str(), F_OK) != 0) {
    throw FormatError(dir + ": not a shardload checkpoint (no " + kManifestName +
                      "; an interrupted save never leaves one)");
  }
  h5::silence_errors();
  try {
    if (SHARDLOAD_H5(H5Fis_hdf5(path.c_str())) <= 0) throw FormatError("not an HDF5 file");
    h5::Handle f = h5::file_handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    if (!h5::has_attr(f.get(), "format") ||
        h5::read_attr_string(f.get(), "format") != kFormatName) {
      throw FormatError("not a shardload manifest (no format attribute 'shardload')");
    }
    Manifest m;
    m.format_version = h5::read_attr_i64(f.get(), "format_version");
    if (m.format_version != kFormatVersion) {
      throw FormatError("format version " + std::to_string(m.format_version) +
                        " is not readable by this shardload (reads version " +
                        std::to_string(kFormatVersion) + ")");
    }
    if (h5::has_attr(f.get(), "library_version")) {
      m.library_version = h5::read_attr_string(f.get(), "library_version");
    }
    if (h5::has_attr(f.get(), "num_ranks")) m.num_ranks = h5::read_attr_i64(f.get(), "num_ranks");
    if (h5::has_attr(f.get(), "created")) m.created = h5::read_attr_string(f.get(), "created");
    m.shard_files = h5::read_strings(f.get(), "shards");
    if (SHARDLOAD_H5(H5Lexists(f.get(), "shard_chunks", H5P_DEFAULT)) > 0) {
      m.shard_chunks = h5::read_i64(f.get(), "shard_chunks");
      if (m.shard_chunks.size() != m.shard_files.size()) {
        throw FormatError("'shard_chunks' and 'shards' have different lengths");
      }
    }
    for (const auto& name : m.shard_files) {
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
        throw FormatError("invalid shard file name '" + name + "'");
      }
    }
    if (SHARDLOAD_H5(H5Lexists(f.get(), "metadata", H5P_DEFAULT)) > 0) {
      h5::Handle meta = h5::group_handle(H5Gopen2(f.get(), "metadata", H5P_DEFAULT));
      auto keys = h5::read_strings(meta.get(), "keys");
      auto values = h5::read_strings(meta.get(), "values");
      if (keys.size() != values.size()) {
        throw FormatError("metadata keys and values have different lengths");
      }
      for (size_t i = 0; i < keys.size(); ++i) m.metadata.emplace_back(keys[i], values[i]);
    }
    return m;
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

std::string serialize_manifest(const Manifest& m) {
  nlohmann::json j;
  j["format_version"] = m.format_version;
  j["library_version"] = m.library_version;
  j["shard_files"] = m.shard_files;
  j["shard_chunks"] = m.shard_chunks;
  j["num_ranks"] = m.num_ranks;
  j["created"] = m.created;
  j["metadata"] = m.metadata;
  return j.dump();
}

Manifest deserialize_manifest(const std::string& bytes) {
  auto j = nlohmann::json::parse(bytes);
  Manifest m;
  m.format_version = j.at("format_version");
  m.library_version = j.at("library_version");
  m.shard_files = j.at("shard_files").get<std::vector<std::string>>();
  m.shard_chunks = j.at("shard_chunks").get<std::vector<int64_t>>();
  m.num_ranks = j.at("num_ranks");
  m.created = j.at("created");
  m.metadata = j.at("metadata").get<std::vector<std::pair<std::string, std::string>>>();
  return m;
}

}  // namespace shardload
