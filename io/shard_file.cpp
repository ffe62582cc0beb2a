#include "io/shard_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>

#include "core/error.h"
#include "io/checkpoint_dir.h"
#include "io/checksum.h"
#include "io/hdf5.h"

namespace shardload {
namespace {

using h5::Handle;

/// The HDF5 type of each dtype on disk and in memory (little-endian hosts). float16 is built
/// the way h5py builds it; bfloat16 has no HDF5 type and is stored as its 16 bits (uint16);
/// bool is h5py's enum of int8 {FALSE, TRUE}.
Handle h5_type(DType dtype) {
  switch (dtype) {
    case DType::kFloat64:
      return h5::type_handle(H5Tcopy(H5T_IEEE_F64LE));
    case DType::kFloat32:
      return h5::type_handle(H5Tcopy(H5T_IEEE_F32LE));
    case DType::kFloat16: {
      Handle t = h5::type_handle(H5Tcopy(H5T_IEEE_F32LE));
      SHARDLOAD_H5(H5Tset_fields(t.get(), 15, 10, 5, 0, 10));
      SHARDLOAD_H5(H5Tset_size(t.get(), 2));
      SHARDLOAD_H5(H5Tset_ebias(t.get(), 15));
      return t;
    }
    case DType::kBFloat16:
      return h5::type_handle(H5Tcopy(H5T_STD_U16LE));
    case DType::kInt64:
      return h5::type_handle(H5Tcopy(H5T_STD_I64LE));
    case DType::kInt32:
      return h5::type_handle(H5Tcopy(H5T_STD_I32LE));
    case DType::kInt16:
      return h5::type_handle(H5Tcopy(H5T_STD_I16LE));
    case DType::kInt8:
      return h5::type_handle(H5Tcopy(H5T_STD_I8LE));
    case DType::kUInt8:
      return h5::type_handle(H5Tcopy(H5T_STD_U8LE));
    case DType::kBool: {
      Handle t = h5::type_handle(H5Tenum_create(H5T_NATIVE_INT8));
      int8_t v = 0;
      SHARDLOAD_H5(H5Tenum_insert(t.get(), "FALSE", &v));
      v = 1;
      SHARDLOAD_H5(H5Tenum_insert(t.get(), "TRUE", &v));
      return t;
    }
  }
  throw FormatError("unknown dtype");
}

/// Checks that a dataset's stored type can hold `dtype` without loss: same class, same size
/// (h5py may write bool as enum or uint8, bfloat16 as uint16 or int16).
void check_stored_type(hid_t file_type, DType dtype) {
  H5T_class_t cls = H5Tget_class(file_type);
  size_t size = H5Tget_size(file_type);
  bool ok = static_cast<int64_t>(size) == dtype_size(dtype);
  switch (dtype) {
    case DType::kFloat64:
    case DType::kFloat32:
    case DType::kFloat16:
      ok = ok && cls == H5T_FLOAT;
      break;
    case DType::kBool:
      ok = ok && (cls == H5T_ENUM || cls == H5T_INTEGER);
      break;
    default:
      ok = ok && cls == H5T_INTEGER;
      if (ok && dtype != DType::kBFloat16) {
        bool is_signed = H5Tget_sign(file_type) == H5T_SGN_2;
        ok = is_signed == (dtype != DType::kUInt8);
      }
  }
  if (!ok) {
    throw FormatError("stored element type (HDF5 class " + std::to_string(cls) + ", " +
                      std::to_string(size) + " bytes) does not hold dtype " +
                      std::string(dtype_name(dtype)));
  }
}

Handle data_space(const Shape& shape) {
  if (shape.empty()) return h5::space_handle(H5Screate(H5S_SCALAR));
  std::vector<hsize_t> dims(shape.begin(), shape.end());
  return h5::space_handle(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
}

Handle file_access_plist() {
  Handle fapl = h5::plist_handle(H5Pcreate(H5P_FILE_ACCESS));
  // Link storage that stays fast with many datasets per group; h5py reads it.
  SHARDLOAD_H5(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST));
  return fapl;
}

}  // namespace

std::string shard_file_name(int shard, int num_shards) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "shard-%05d-of-%05d.h5", shard, num_shards);
  return buf;
}

// ---------------------------------------------------------------------------------------------
struct ShardWriter::Impl {
  Handle file;
  Handle data_group;
};

ShardWriter::ShardWriter(const std::string& path, int shard, int num_shards)
    : impl_(std::make_unique<Impl>()), path_(path) {
  h5::silence_errors();
  try {
    Handle fapl = file_access_plist();
    impl_->file = h5::file_handle(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl.get()));
    h5::write_attr(impl_->file.get(), "format", std::string(kFormatName));
    h5::write_attr(impl_->file.get(), "format_version", kFormatVersion);
    h5::write_attr(impl_->file.get(), "shard", static_cast<int64_t>(shard));
    h5::write_attr(impl_->file.get(), "num_shards", static_cast<int64_t>(num_shards));
    impl_->data_group = h5::group_handle(
        H5Gcreate2(impl_->file.get(), "data", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

ShardWriter::~ShardWriter() = default;

const ChunkRecord& ShardWriter::add(ChunkRecord record, const void* data) {
  try {
    record.nbytes = static_cast<uint64_t>(numel(record.shape) * dtype_size(record.dtype));
    record.dataset = "/data/" + std::to_string(rows_.size());
    record.checksum = checksum(data, record.nbytes);
    Handle type = h5_type(record.dtype);
    Handle space = data_space(record.shape);
    Handle ds = h5::dataset_handle(H5Dcreate2(impl_->file.get(), record.dataset.c_str(), type.get(),
                                              space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    if (record.nbytes > 0) {
      SHARDLOAD_H5(H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
    }
    data_bytes_ += record.nbytes;
    rows_.push_back(std::move(record));
    return rows_.back();
  } catch (...) {
    rethrow_with_context("In " + path_ + ": writing key '" + record.key + "': ");
  }
}

void ShardWriter::finish() {
  try {
    Handle index = h5::group_handle(
        H5Gcreate2(impl_->file.get(), "index", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    std::vector<std::string> keys, dtypes, datasets;
    std::vector<int64_t> ndim, global_shape, offset, shape;
    std::vector<uint64_t> nbytes, checksums;
    std::vector<int64_t> order;
    for (const auto& r : rows_) {
      keys.push_back(r.key);
      dtypes.emplace_back(dtype_name(r.dtype));
      datasets.push_back(r.dataset);
      ndim.push_back(static_cast<int64_t>(r.global_shape.size()));
      global_shape.insert(global_shape.end(), r.global_shape.begin(), r.global_shape.end());
      offset.insert(offset.end(), r.offset.begin(), r.offset.end());
      shape.insert(shape.end(), r.shape.begin(), r.shape.end());
      nbytes.push_back(r.nbytes);
      checksums.push_back(r.checksum);
      order.push_back(r.order);
    }
    h5::write_strings(index.get(), "key", keys);
    h5::write_strings(index.get(), "dtype", dtypes);
    h5::write_i64(index.get(), "ndim", ndim);
    h5::write_i64(index.get(), "global_shape", global_shape);
    h5::write_i64(index.get(), "offset", offset);
    h5::write_i64(index.get(), "shape", shape);
    h5::write_strings(index.get(), "dataset", datasets);
    h5::write_u64(index.get(), "nbytes", nbytes);
    h5::write_u64(index.get(), "checksum", checksums);
    h5::write_i64(index.get(), "order", order);
    index.reset();
    impl_->data_group.reset();
    SHARDLOAD_H5(H5Fflush(impl_->file.get(), H5F_SCOPE_GLOBAL));
    impl_->file.close("H5Fclose");
    fsync_file(path_);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": writing the index: ");
  }
}

// ---------------------------------------------------------------------------------------------
struct ShardReader::Impl {
  Handle file;
};

ShardReader::ShardReader(const std::string& path) : impl_(std::make_unique<Impl>()), path_(path) {
  h5::silence_errors();
  try {
    if (::access(path.c_str(), R_OK) != 0) throw FormatError("file is missing or unreadable");
    if (SHARDLOAD_H5(H5Fis_hdf5(path.c_str())) <= 0) throw FormatError("not an HDF5 file");
    impl_->file = h5::file_handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    hid_t f = impl_->file.get();
    if (!h5::has_attr(f, "format") || h5::read_attr_string(f, "format") != kFormatName) {
      throw FormatError("not a shardload shard file (no format attribute 'shardload')");
    }
    int64_t version = h5::read_attr_i64(f, "format_version");
    if (version != kFormatVersion) {
      throw FormatError("format version " + std::to_string(version) +
                        " is not readable by this shardload (reads version " +
                        std::to_string(kFormatVersion) + ")");
    }
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

ShardReader::~ShardReader() = default;
ShardReader::ShardReader(ShardReader&&) noexcept = default;
ShardReader& ShardReader::operator=(ShardReader&&) noexcept = default;

std::vector<ChunkRecord> ShardReader::read_index(int32_t file_number) const {
  try {
    Handle index = h5::group_handle(H5Gopen2(impl_->file.get(), "index", H5P_DEFAULT));
    hid_t g = index.get();
    auto keys = h5::read_strings(g, "key");
    auto dtypes = h5::read_strings(g, "dtype");
    auto ndim = h5::read_i64(g, "ndim");
    auto global_shape = h5::read_i64(g, "global_shape");
    auto offset = h5::read_i64(g, "offset");
    auto shape = h5::read_i64(g, "shape");
    auto datasets = h5::read_strings(g, "dataset");
    auto nbytes = h5::read_u64(g, "nbytes");
    auto checksums = h5::read_u64(g, "checksum");
    // Optional: writers that omit it (h5py by hand) get file order.
    std::vector<int64_t> order;
    if (SHARDLOAD_H5(H5Lexists(g, "order", H5P_DEFAULT)) > 0) order = h5::read_i64(g, "order");
    size_t n = keys.size();
    if (dtypes.size() != n || ndim.size() != n || datasets.size() != n || nbytes.size() != n ||
        checksums.size() != n || (!order.empty() && order.size() != n)) {
      throw FormatError("index columns have different lengths");
    }
    int64_t total_dims = 0;
    for (int64_t d : ndim) {
      if (d < 0 || d > 64) throw FormatError("index column 'ndim' holds " + std::to_string(d));
      total_dims += d;
    }
    if (static_cast<int64_t>(global_shape.size()) != total_dims ||
        static_cast<int64_t>(offset.size()) != total_dims ||
        static_cast<int64_t>(shape.size()) != total_dims) {
      throw FormatError("index shape columns do not match the sum of 'ndim' (" +
                        std::to_string(total_dims) + ")");
    }
    std::vector<ChunkRecord> rows(n);
    size_t pos = 0;
    for (size_t i = 0; i < n; ++i) {
      ChunkRecord& r = rows[i];
      r.key = std::move(keys[i]);
      auto dt = dtype_from_name(dtypes[i]);
      if (!dt) throw FormatError("key '" + r.key + "': unknown dtype '" + dtypes[i] + "'");
      r.dtype = *dt;
      auto d = static_cast<size_t>(ndim[i]);
      r.global_shape.assign(global_shape.begin() + pos, global_shape.begin() + pos + d);
      r.offset.assign(offset.begin() + pos, offset.begin() + pos + d);
      r.shape.assign(shape.begin() + pos, shape.begin() + pos + d);
      pos += d;
      r.file = file_number;
      r.dataset = std::move(datasets[i]);
      r.nbytes = nbytes[i];
      r.checksum = checksums[i];
      r.order = order.empty() ? (int64_t{file_number} << 32) + static_cast<int64_t>(i) : order[i];
      for (int64_t e : r.shape) {
        if (e < 0) throw FormatError("key '" + r.key + "': negative chunk extent");
      }
      if (r.nbytes != static_cast<uint64_t>(numel(r.shape) * dtype_size(r.dtype))) {
        throw FormatError("key '" + r.key + "': nbytes " + std::to_string(r.nbytes) +
                          " does not match shape " + shape_str(r.shape) + " of " +
                          std::string(dtype_name(r.dtype)));
      }
    }
    return rows;
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading the index: ");
  }
}

void ShardReader::read(const ChunkRecord& row, const Shape& offset_in_chunk, const Shape& shape,
                       void* dst, bool verify) const {
  try {
    Handle ds = h5::dataset_handle(H5Dopen2(impl_->file.get(), row.dataset.c_str(), H5P_DEFAULT));
    Handle file_type = h5::type_handle(H5Dget_type(ds.get()));
    check_stored_type(file_type.get(), row.dtype);
    Handle file_space = h5::space_handle(H5Dget_space(ds.get()));
    int rank = SHARDLOAD_H5(H5Sget_simple_extent_ndims(file_space.get()));
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    if (rank > 0) SHARDLOAD_H5(H5Sget_simple_extent_dims(file_space.get(), dims.data(), nullptr));
    if (dims.size() != row.shape.size() ||
        !std::equal(dims.begin(), dims.end(), row.shape.begin(),
                    [](hsize_t a, int64_t b) { return static_cast<int64_t>(a) == b; })) {
      throw FormatError("dataset " + row.dataset + " has shape " +
                        shape_str(Shape(dims.begin(), dims.end())) + ", the index says " +
                        shape_str(row.shape));
    }
    int64_t n = numel(shape);
    if (n == 0) return;
    bool whole = shape == row.shape;
    // Integers, enums: read in the stored type's native form (no value conversion). Floats:
    // read in our canonical type, so a big-endian file written by h5py still reads right.
    Handle mem_type = h5_type(row.dtype);
    if (H5Tget_class(file_type.get()) != H5T_FLOAT) {
      mem_type = h5::type_handle(H5Tget_native_type(file_type.get(), H5T_DIR_ASCEND));
    }
    if (whole) {
      SHARDLOAD_H5(H5Dread(ds.get(), mem_type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, dst));
    } else {
      std::vector<hsize_t> start(offset_in_chunk.begin(), offset_in_chunk.end());
      std::vector<hsize_t> count(shape.begin(), shape.end());
      SHARDLOAD_H5(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr,
                                       count.data(), nullptr));
      Handle mem_space = data_space(shape);
      SHARDLOAD_H5(
          H5Dread(ds.get(), mem_type.get(), mem_space.get(), file_space.get(), H5P_DEFAULT, dst));
    }
    if (verify && whole && checksum(dst, row.nbytes) != row.checksum) {
      throw FormatError("checksum mismatch in dataset " + row.dataset + " (the file is corrupt)");
    }
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key '" + row.key + "': ");
  }
}

void ShardReader::read_chunk(const ChunkRecord& row, void* dst, bool verify) const {
  read(row, Shape(row.shape.size(), 0), row.shape, dst, verify);
}

}  // namespace shardload
