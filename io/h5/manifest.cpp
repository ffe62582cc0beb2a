#include "io/h5/manifest.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "core/error.h"
#include "core/wire.h"
#include "io/checksum.h"
#include "io/file_bytes.h"
#include "io/file_system.h"
#include "io/h5/format.h"
#include "io/h5/hdf5.h"
#include "io/h5/vlen_check.h"

namespace shardload {

void write_manifest(const std::string& dir, const Manifest& m) {
  std::string path = dir + "/" + kManifestName;
  h5::silence_errors();
  try {
    h5::Handle f =
        h5::file_handle(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    h5::write_attr(f.get(), "format", std::string(kFormatName));
    h5::write_attr(f.get(), "format_version", kFormatVersion);
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
    if (!m.values.empty()) {
      const std::string blob = encode_values(m.values);
      h5::write_bytes(f.get(), "values", blob);
      h5::write_attr(f.get(), "values_checksum",
                     static_cast<int64_t>(checksum(blob.data(), blob.size())));
    }
    SHARDLOAD_H5(H5Fflush(f.get(), H5F_SCOPE_GLOBAL));
    f.close("H5Fclose");
    fsync_file(path);
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

namespace {

/// Reads and checks an open manifest of `file_size` bytes.
Manifest parse_manifest(hid_t f, const FileBytes& bytes) {
  const uint64_t file_size = bytes.size();
  h5::VlenCheck vlen(f, bytes);
  vlen.check_attribute_messages(f, "the root group");
  if (!h5::has_attr(f, "format") || h5::read_attr_string(f, "format", vlen) != kFormatName) {
    throw FormatError("not a shardload manifest (no format attribute 'shardload')");
  }
  if (!h5::has_attr(f, "format_version")) throw FormatError("no attribute 'format_version'");
  Manifest m;
  m.format_version = h5::read_attr_i64(f, "format_version");
  if (m.format_version < kOldestFormatVersion || m.format_version > kFormatVersion) {
    throw FormatError("format version " + std::to_string(m.format_version) +
                      " is not readable by this shardload (reads versions " +
                      std::to_string(kOldestFormatVersion) + " to " +
                      std::to_string(kFormatVersion) + ")");
  }
  if (h5::has_attr(f, "library_version")) {
    m.library_version = h5::read_attr_string(f, "library_version", vlen);
  }
  if (h5::has_attr(f, "num_ranks")) {
    m.num_ranks = h5::read_attr_i64(f, "num_ranks");
    if (m.num_ranks < 1) {
      throw FormatError("attribute 'num_ranks' is " + std::to_string(m.num_ranks));
    }
  }
  if (h5::has_attr(f, "created")) m.created = h5::read_attr_string(f, "created", vlen);
  const h5::ColumnLimits shard_limits{kMaxShardFiles, file_size};
  m.shard_files = h5::read_strings(f, "shards", shard_limits, vlen);
  if (h5::link_exists(f, "shard_chunks")) {
    if (h5::column_rows(f, "shard_chunks", H5T_INTEGER, shard_limits) !=
        static_cast<int64_t>(m.shard_files.size())) {
      throw FormatError("'shard_chunks' and 'shards' have different lengths");
    }
    m.shard_chunks = h5::read_i64(f, "shard_chunks", shard_limits);
    for (int64_t c : m.shard_chunks) {
      if (c < 0 || c > kMaxIndexRows) {
        throw FormatError("'shard_chunks' holds " + std::to_string(c) + " (at most " +
                          std::to_string(kMaxIndexRows) + " rows per shard)");
      }
    }
  }
  std::set<std::string> seen;
  for (const auto& name : m.shard_files) {
    if (name.empty() || name.size() > static_cast<size_t>(kMaxShardNameBytes) ||
        name.find('/') != std::string::npos || name == "." || name == "..") {
      throw FormatError("invalid shard file name '" + name.substr(0, 300) +
                        "' (a plain file name in the checkpoint directory)");
    }
    if (!seen.insert(name).second) {
      throw FormatError("shard file name '" + name + "' appears twice");
    }
  }
  if (h5::link_exists(f, "metadata")) {
    h5::Handle meta = h5::open_group(f, "metadata");
    const h5::ColumnLimits meta_limits{kMaxMetadataEntries, file_size};
    if (h5::column_rows(meta.get(), "keys", H5T_STRING, meta_limits) !=
        h5::column_rows(meta.get(), "values", H5T_STRING, meta_limits)) {
      throw FormatError("metadata keys and values have different lengths");
    }
    auto keys = h5::read_strings(meta.get(), "keys", meta_limits, vlen);
    auto values = h5::read_strings(meta.get(), "values", meta_limits, vlen);
    for (size_t i = 0; i < keys.size(); ++i) m.metadata.emplace_back(keys[i], values[i]);
  }
  if (h5::link_exists(f, "values")) {
    const auto limit = static_cast<int64_t>(std::min<uint64_t>(kMaxValueBytes, file_size));
    const std::string blob = h5::read_bytes(f, "values", h5::ColumnLimits{limit, file_size});
    if (!h5::has_attr(f, "values_checksum")) {
      throw FormatError("'values' has no attribute 'values_checksum'");
    }
    const auto stored = static_cast<uint64_t>(h5::read_attr_i64(f, "values_checksum"));
    if (const uint64_t got = checksum(blob.data(), blob.size()); got != stored) {
      throw FormatError("'values' checksum mismatch (stored " + std::to_string(stored) +
                        ", computed " + std::to_string(got) + "): the plain values are corrupt");
    }
    m.values = decode_values(blob, "'values'");
  }
  return m;
}

}  // namespace

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
  std::lock_guard lock(h5::library_mutex());
  h5::Deadline deadline(path);
  try {
    // H5Fis_hdf5 opens the path itself, blocking: a FIFO is refused first, without blocking.
    ::close(open_regular_file(path));
    if (SHARDLOAD_H5(H5Fis_hdf5(path.c_str())) <= 0) throw FormatError("not an HDF5 file");
    h5::Handle f = h5::open_file(path);
    FileBytes bytes = FileBytes::from_descriptor(h5::dup_descriptor(f.get()), path);
    return parse_manifest(f.get(), bytes);
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

Manifest read_manifest_image(const std::string& name, const std::string& image) {
  h5::silence_errors();
  std::lock_guard lock(h5::library_mutex());
  h5::Deadline deadline(name);
  try {
    h5::Handle f = h5::open_image(image);
    return parse_manifest(f.get(), FileBytes::from_image(image));
  } catch (...) {
    rethrow_with_context("In " + name + ": ");
  }
}

std::string serialize_manifest(const Manifest& m) {
  WireWriter w;
  w.i64(m.format_version);
  w.str(m.library_version);
  w.u64(m.shard_files.size());
  for (const auto& f : m.shard_files) w.str(f);
  w.u64(m.shard_chunks.size());
  for (int64_t c : m.shard_chunks) w.i64(c);
  w.i64(m.num_ranks);
  w.str(m.created);
  w.u64(m.metadata.size());
  for (const auto& [k, v] : m.metadata) {
    w.str(k);
    w.str(v);
  }
  w.str(m.values.empty() ? std::string() : encode_values(m.values));
  return w.take();
}

Manifest deserialize_manifest(const std::string& bytes) {
  WireReader r(bytes, "serialized manifest");
  Manifest m;
  m.format_version = r.i64("format version");
  m.library_version = r.str("library version");
  for (uint64_t n = r.count(8, "shard count"); n > 0; --n) {
    m.shard_files.push_back(r.str("shard name"));
  }
  for (uint64_t n = r.count(8, "chunk count"); n > 0; --n) {
    m.shard_chunks.push_back(r.i64("chunk count"));
  }
  m.num_ranks = r.i64("rank count");
  m.created = r.str("creation time");
  for (uint64_t n = r.count(16, "metadata count"); n > 0; --n) {
    std::string k = r.str("metadata key");
    m.metadata.emplace_back(std::move(k), r.str("metadata value"));
  }
  const std::string values = r.str("values");
  if (!values.empty()) m.values = decode_values(values, "'values'");
  r.finish();
  return m;
}

}  // namespace shardload
