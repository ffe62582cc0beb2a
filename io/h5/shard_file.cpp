#include "io/h5/shard_file.h"

#include <unistd.h>

#include <cstdio>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>

#include "core/error.h"
#include "io/checksum.h"
#include "io/chunk_bytes.h"
#include "io/file_bytes.h"
#include "io/file_system.h"
#include "io/h5/hdf5.h"
#include "io/h5/shard_index.h"
#include "io/h5/vlen_check.h"

namespace shardload {
namespace {

using h5::Handle;

/// float16 as h5py builds it.
Handle half_type() {
  Handle t = h5::type_handle(H5Tcopy(H5T_IEEE_F32LE));
  SHARDLOAD_H5(H5Tset_fields(t.get(), 15, 10, 5, 0, 10));
  SHARDLOAD_H5(H5Tset_size(t.get(), 2));
  SHARDLOAD_H5(H5Tset_ebias(t.get(), 15));
  return t;
}

/// A complex number as h5py stores one: a compound of two floats named "r" and "i".
Handle complex_type(Handle part, size_t part_bytes) {
  Handle t = h5::type_handle(H5Tcreate(H5T_COMPOUND, 2 * part_bytes));
  SHARDLOAD_H5(H5Tinsert(t.get(), "r", 0, part.get()));
  SHARDLOAD_H5(H5Tinsert(t.get(), "i", part_bytes, part.get()));
  return t;
}

/// The HDF5 type of each dtype on disk (little-endian). float16 is built the way h5py builds
/// it; bfloat16 has no HDF5 type and is stored as its 16 bits (uint16); bool is h5py's enum of
/// int8 {FALSE, TRUE}; complex numbers are h5py's compound {r, i}; the float8 and float4 types
/// are their bytes (uint8: HDF5's float conversions would read some of their values wrong), the
/// index's dtype column says which.
Handle h5_type(DType dtype) {
  switch (dtype) {
    case DType::kUInt16:
      return h5::type_handle(H5Tcopy(H5T_STD_U16LE));
    case DType::kUInt32:
      return h5::type_handle(H5Tcopy(H5T_STD_U32LE));
    case DType::kUInt64:
      return h5::type_handle(H5Tcopy(H5T_STD_U64LE));
    case DType::kComplex32:
      return complex_type(half_type(), 2);
    case DType::kComplex64:
      return complex_type(h5::type_handle(H5Tcopy(H5T_IEEE_F32LE)), 4);
    case DType::kComplex128:
      return complex_type(h5::type_handle(H5Tcopy(H5T_IEEE_F64LE)), 8);
    case DType::kFloat8E4M3FN:
    case DType::kFloat8E5M2:
    case DType::kFloat8E4M3FNUZ:
    case DType::kFloat8E5M2FNUZ:
    case DType::kFloat8E8M0FNU:
    case DType::kFloat4E2M1FNx2:
      return h5::type_handle(H5Tcopy(H5T_STD_U8LE));
    case DType::kFloat64:
      return h5::type_handle(H5Tcopy(H5T_IEEE_F64LE));
    case DType::kFloat32:
      return h5::type_handle(H5Tcopy(H5T_IEEE_F32LE));
    case DType::kFloat16:
      return half_type();
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

/// Whether a stored element type holds `dtype` bit for bit: same class, size and sign, every bit
/// significant (precision = 8 * size, no bit offset), IEEE fields for floats, either byte order.
/// h5py may write bool as an enum of int8 or as (u)int8, bfloat16 as uint16 or int16; a complex
/// number is h5py's compound of two little-endian floats "r" and "i" of half the size, "r" first.
bool type_holds(const h5::ElementType& t, DType dtype) {
  if (static_cast<int64_t>(t.size) != dtype_size(dtype)) return false;
  if (dtype == DType::kComplex32 || dtype == DType::kComplex64 || dtype == DType::kComplex128) {
    const DType part = dtype == DType::kComplex32   ? DType::kFloat16
                       : dtype == DType::kComplex64 ? DType::kFloat32
                                                    : DType::kFloat64;
    return t.cls == H5T_COMPOUND && t.member_types.size() == 2 && t.member_names[0] == "r" &&
           t.member_names[1] == "i" && t.member_offsets[0] == 0 &&
           t.member_offsets[1] == t.size / 2 && type_holds(t.member_types[0], part) &&
           type_holds(t.member_types[1], part) &&
           // Little-endian parts only: the byte swap of big-endian data goes by the dtype's size.
           t.member_types[0].order == H5T_ORDER_LE && t.member_types[1].order == H5T_ORDER_LE;
  }
  if (t.precision != t.size * 8 || t.bit_offset != 0) return false;
  if (t.order != H5T_ORDER_LE && t.order != H5T_ORDER_BE) return false;
  auto ieee = [&](size_t spos, size_t epos, size_t esize, size_t msize, size_t ebias) {
    return t.cls == H5T_FLOAT && t.spos == spos && t.epos == epos && t.esize == esize &&
           t.mpos == 0 && t.msize == msize && t.ebias == ebias && t.norm == H5T_NORM_IMPLIED;
  };
  switch (dtype) {
    case DType::kFloat64:
      return ieee(63, 52, 11, 52, 1023);
    case DType::kFloat32:
      return ieee(31, 23, 8, 23, 127);
    case DType::kFloat16:
      return ieee(15, 10, 5, 10, 15);
    case DType::kBool:
      return t.cls == H5T_ENUM || t.cls == H5T_INTEGER;
    case DType::kBFloat16:
      return t.cls == H5T_INTEGER;
    case DType::kUInt8:
    case DType::kUInt16:
    case DType::kUInt32:
    case DType::kUInt64:
      return t.cls == H5T_INTEGER && !t.is_signed;
    case DType::kFloat8E4M3FN:
    case DType::kFloat8E5M2:
    case DType::kFloat8E4M3FNUZ:
    case DType::kFloat8E5M2FNUZ:
    case DType::kFloat8E8M0FNU:
    case DType::kFloat4E2M1FNx2:
      return t.cls == H5T_INTEGER;  // their bytes, as uint8 (or int8)
    default:
      return t.cls == H5T_INTEGER && t.is_signed;
  }
}

/// A packed dataset's element type: unsigned 8-bit integers.
bool is_byte_type(const h5::ElementType& t) {
  return t.cls == H5T_INTEGER && t.size == 1 && !t.is_signed && t.precision == 8 &&
         t.bit_offset == 0;
}

const char* layout_name(H5D_layout_t layout) {
  switch (layout) {
    case H5D_COMPACT:
      return "compact";
    case H5D_CHUNKED:
      return "chunked";
    case H5D_VIRTUAL:
      return "virtual (its data lives in other datasets or files)";
    default:
      return "of unknown layout";
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
  // Every object of 64 KiB or more (a chunk's dataset, a pack) starts on a 4 KiB page: a loader's
  // cache-line-aligned staging then lies where the bytes do within their cache line, which the
  // kernel's copy needs to run at full speed (loader/transfer/staging_arena.h), and direct I/O
  // reads it without a partial first page. At most 4 KiB of padding per such object.
  SHARDLOAD_H5(H5Pset_alignment(fapl.get(), hsize_t{64} << 10, 4096));
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
  Handle packed_group;
  ShardWriterOptions options;
  std::string pack;        ///< bytes of the pack being filled
  bool pack_open = false;  ///< some row refers to the pack being filled (maybe with 0 bytes)
  int packs = 0;           ///< packs written
  int datasets = 0;        ///< chunk datasets of their own written
};

ShardWriter::ShardWriter(const std::string& path, int shard, int num_shards,
                         const ShardWriterOptions& options)
    : impl_(std::make_unique<Impl>()), path_(path) {
  h5::silence_errors();
  try {
    if (options.block_bytes &&
        (options.block_bytes < kMinBlockBytes || options.block_bytes > kMaxBlockBytes ||
         options.block_bytes % 8 != 0)) {
      throw UsageError("block_bytes " + std::to_string(options.block_bytes) +
                       " is not a multiple of 8 between " + std::to_string(kMinBlockBytes) +
                       " and " + std::to_string(kMaxBlockBytes));
    }
    impl_->options = options;
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
    const ShardWriterOptions& o = impl_->options;
    record.nbytes = static_cast<uint64_t>(byte_size(record.shape, dtype_size(record.dtype)));
    record.checksum = checksum(data, record.nbytes);
    record.block_bytes = o.block_bytes;
    record.block_checksums.clear();
    if (const uint64_t blocks = block_count(record.nbytes, o.block_bytes); blocks == 1) {
      record.block_checksums.push_back(record.checksum);
    } else {
      record.block_checksums.reserve(blocks);
      const auto* p = static_cast<const char*>(data);
      for (uint64_t b = 0; b < blocks; ++b) {
        const uint64_t lo = b * o.block_bytes;
        record.block_checksums.push_back(
            checksum(p + lo, std::min(o.block_bytes, record.nbytes - lo)));
      }
    }
    if (record.nbytes < o.pack_threshold) {
      if (impl_->pack_open && impl_->pack.size() + record.nbytes > o.pack_bytes) flush_pack();
      // One allocation per pack: growing it by copies cost more than packing saved.
      if (!impl_->pack_open) impl_->pack.reserve(o.pack_bytes);
      record.dataset = "/packed/" + std::to_string(impl_->packs);
      record.data_offset = impl_->pack.size();
      impl_->pack.append(static_cast<const char*>(data), record.nbytes);
      impl_->pack_open = true;
    } else {
      record.dataset = "/data/" + std::to_string(impl_->datasets++);
      record.data_offset = 0;
      Handle type = h5_type(record.dtype);
      Handle space = data_space(record.shape);
      Handle ds =
          h5::dataset_handle(H5Dcreate2(impl_->file.get(), record.dataset.c_str(), type.get(),
                                        space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
      if (record.nbytes > 0) {
        SHARDLOAD_H5(H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, data));
      }
    }
    data_bytes_ += record.nbytes;
    rows_.push_back(std::move(record));
    return rows_.back();
  } catch (...) {
    rethrow_with_context("In " + path_ + ": writing key '" + record.key + "': ");
  }
}

void ShardWriter::flush_pack() {
  if (!impl_->pack_open) return;
  if (!impl_->packed_group.valid()) {
    impl_->packed_group = h5::group_handle(
        H5Gcreate2(impl_->file.get(), "packed", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  }
  const std::string name = std::to_string(impl_->packs);
  Handle space = data_space({static_cast<int64_t>(impl_->pack.size())});
  Handle ds = h5::dataset_handle(H5Dcreate2(impl_->packed_group.get(), name.c_str(), H5T_STD_U8LE,
                                            space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!impl_->pack.empty()) {
    SHARDLOAD_H5(
        H5Dwrite(ds.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, impl_->pack.data()));
  }
  ++impl_->packs;
  impl_->pack.clear();
  impl_->pack_open = false;
}

void ShardWriter::finish() {
  try {
    flush_pack();
    write_index_table(impl_->file.get(), rows_, impl_->options.block_bytes);
    impl_->data_group.reset();
    impl_->packed_group.reset();
    SHARDLOAD_H5(H5Fflush(impl_->file.get(), H5F_SCOPE_GLOBAL));
    impl_->file.close("H5Fclose");
    fsync_file(path_);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": writing the index: ");
  }
}

// ---------------------------------------------------------------------------------------------
namespace {

/// What prepare() learnt about one dataset: enough to locate any chunk in it without HDF5.
struct DatasetInfo {
  h5::Storage storage;
  h5::ElementType type;
};

/// Where a chunk's bytes are in the file.
struct Location {
  uint64_t pos = 0;
  bool swap = false;
};

}  // namespace

struct ShardReader::Impl {
  std::string name;  ///< the file's path, for the HDF5 deadline
  Handle file;
  FileBytes bytes;
  std::unique_ptr<h5::VlenCheck> vlen;  ///< strings are checked against `bytes` before reading
  int64_t version = 0;
  /// Datasets looked up so far, by path. Reads of prepared rows only look here (shared lock).
  mutable std::unordered_map<std::string, DatasetInfo> datasets;
  mutable std::shared_mutex datasets_mutex;

  ~Impl() {
    std::lock_guard lock(h5::library_mutex());
    file.reset();
  }

  void check_format(const std::string& name) {
    const hid_t f = file.get();
    vlen = std::make_unique<h5::VlenCheck>(f, bytes);
    vlen->check_attribute_messages(f, "the root group");
    if (!h5::has_attr(f, "format") || h5::read_attr_string(f, "format", *vlen) != kFormatName) {
      throw FormatError("not a shardload shard file (no format attribute 'shardload')");
    }
    if (!h5::has_attr(f, "format_version")) throw FormatError("no attribute 'format_version'");
    version = h5::read_attr_i64(f, "format_version");
    if (version < kOldestFormatVersion || version > kFormatVersion) {
      throw FormatError("format version " + std::to_string(version) +
                        " is not readable by this shardload (reads versions " +
                        std::to_string(kOldestFormatVersion) + " to " +
                        std::to_string(kFormatVersion) + ")");
    }
    (void)name;
  }

  const DatasetInfo& dataset(const std::string& path) const {
    {
      std::shared_lock lock(datasets_mutex);
      if (auto it = datasets.find(path); it != datasets.end()) return it->second;
    }
    // Not prepared: HDF5 calls, serialized with every other reader's (elements of an
    // unordered_map stay where they are when it grows, so references handed out stay valid).
    std::lock_guard h5_lock(h5::library_mutex());
    std::unique_lock lock(datasets_mutex);
    if (auto it = datasets.find(path); it != datasets.end()) return it->second;
    h5::Deadline deadline(name);
    Handle ds = h5::open_dataset(file.get(), path);
    DatasetInfo info;
    info.storage = h5::storage_of(ds.get());
    Handle type = h5::type_handle(H5Dget_type(ds.get()));
    info.type = h5::element_type(type.get());
    return datasets.emplace(path, std::move(info)).first->second;
  }

  /// Finds the row's bytes in its dataset and checks every fact the read will rely on.
  Location locate(const ChunkRecord& row) const {
    const DatasetInfo& ds = dataset(row.dataset);
    const h5::Storage& s = ds.storage;
    // Built only for an error: a string per chunk located was a malloc per chunk (twice per
    // chunk read: prepared, then read), 100,000 of them in a load of 100,000 small tensors.
    const auto what = [&row] { return "dataset " + row.dataset; };
    if (s.layout != H5D_CONTIGUOUS) {
      throw FormatError(what() + " is " + layout_name(s.layout) +
                        "; chunk data must be in contiguous datasets");
    }
    if (s.external_files > 0) {
      throw FormatError(what() + " keeps its bytes in " + std::to_string(s.external_files) +
                        " external file(s); chunk data must be inside the shard file");
    }
    if (s.filters > 0) {
      throw FormatError(what() + " has " + std::to_string(s.filters) +
                        " filter(s) (compression, ...); chunk data must be unfiltered");
    }
    const Shape dims = s.scalar ? Shape{} : Shape(s.dims);
    const bool same_shape = dims == row.shape && s.scalar == row.shape.empty();
    uint64_t start = 0, need = row.nbytes;
    Location loc;
    if (same_shape && type_holds(ds.type, row.dtype) && row.data_offset == 0) {
      loc.swap = ds.type.order == H5T_ORDER_BE && ds.type.size > 1;
    } else if (version >= 2 && !s.scalar && dims.size() == 1 && is_byte_type(ds.type)) {
      // A packed dataset: the chunk is bytes [data_offset, data_offset + nbytes) of it.
      start = row.data_offset;
      const uint64_t end = checked_add(row.data_offset, row.nbytes, "data_offset + nbytes");
      if (end > static_cast<uint64_t>(dims[0])) {
        throw FormatError("the chunk's bytes [" + std::to_string(start) + ", " +
                          std::to_string(end) + ") lie beyond the end of packed " + what() + " (" +
                          std::to_string(dims[0]) + " bytes)");
      }
      need = static_cast<uint64_t>(dims[0]);
    } else if (!same_shape) {
      throw FormatError(what() + " has shape " + shape_str(dims) + ", the index says " +
                        shape_str(row.shape));
    } else if (row.data_offset != 0) {
      throw FormatError(what() + " holds one chunk, but the index gives data offset " +
                        std::to_string(row.data_offset));
    } else {
      throw FormatError(what() + ": stored element type (" + ds.type.describe() +
                        ") does not hold dtype " + std::string(dtype_name(row.dtype)));
    }
    if (row.nbytes == 0) return loc;
    if (!s.has_offset) throw FormatError(what() + " has no storage in the file (never written)");
    const uint64_t file_size = bytes.size();
    if (s.bytes < need || s.offset > file_size || s.bytes > file_size - s.offset) {
      throw FormatError(what() + " stores " + std::to_string(s.bytes) + " bytes at offset " +
                        std::to_string(s.offset) + " (needs " + std::to_string(need) +
                        "); the file has " + std::to_string(file_size));
    }
    loc.pos = s.offset + start;
    return loc;
  }

  ChunkBytes chunk_bytes(const ChunkRecord& row, const Location& loc) const {
    if (row.block_checksums.size() != block_count(row.nbytes, row.block_bytes)) {
      throw FormatError("the index row has " + std::to_string(row.block_checksums.size()) +
                        " block checksums for " + std::to_string(row.nbytes) + " bytes");
    }
    ChunkBytes c;
    c.file = &bytes;
    c.pos = loc.pos;
    c.nbytes = row.nbytes;
    c.elem_size = dtype_size(row.dtype);
    c.byte_swap = loc.swap;
    c.is_bool = row.dtype == DType::kBool;
    c.checksum = row.checksum;
    c.block_bytes = row.block_bytes;
    c.blocks = row.block_checksums.data();
    c.dataset = row.dataset;
    c.data_offset = row.data_offset;
    return c;
  }
};

ShardReader::ShardReader(const std::string& path) : impl_(std::make_unique<Impl>()), path_(path) {
  h5::silence_errors();
  std::lock_guard lock(h5::library_mutex());
  impl_->name = path;
  h5::Deadline deadline(path);
  try {
    if (::access(path.c_str(), R_OK) != 0) throw FormatError("file is missing or unreadable");
    // H5Fis_hdf5 opens the path itself, blocking: a FIFO is refused first, without blocking.
    ::close(open_regular_file(path));
    if (SHARDLOAD_H5(H5Fis_hdf5(path.c_str())) <= 0) throw FormatError("not an HDF5 file");
    impl_->file = h5::open_file(path);
    impl_->bytes = FileBytes::from_descriptor(h5::dup_descriptor(impl_->file.get()), path);
    impl_->check_format(path);
  } catch (...) {
    rethrow_with_context("In " + path + ": ");
  }
}

ShardReader::ShardReader(const std::string& name, std::string image)
    : impl_(std::make_unique<Impl>()), path_(name) {
  h5::silence_errors();
  std::lock_guard lock(h5::library_mutex());
  impl_->name = name;
  h5::Deadline deadline(name);
  try {
    impl_->file = h5::open_image(image);
    impl_->bytes = FileBytes::from_image(std::move(image));
    impl_->check_format(name);
  } catch (...) {
    rethrow_with_context("In " + name + ": ");
  }
}

ShardReader::~ShardReader() = default;
ShardReader::ShardReader(ShardReader&&) noexcept = default;
ShardReader& ShardReader::operator=(ShardReader&&) noexcept = default;

int64_t ShardReader::format_version() const { return impl_->version; }
uint64_t ShardReader::read_calls() const { return impl_->bytes.read_calls(); }
uint64_t ShardReader::file_size() const { return impl_->bytes.size(); }

std::vector<ChunkRecord> ShardReader::read_index(int32_t file_number) const {
  std::lock_guard lock(h5::library_mutex());
  h5::Deadline deadline(path_);
  try {
    return read_index_table(impl_->file.get(), impl_->version, impl_->bytes.size(), file_number,
                            *impl_->vlen);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading the index: ");
  }
}

void ShardReader::prepare(const ChunkRecord& row) const {
  try {
    impl_->locate(row);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key '" + row.key + "': ");
  }
}

void ShardReader::read(const ChunkRecord& row, const Shape& offset_in_chunk, const Shape& shape,
                       void* dst, bool verify) const {
  try {
    const ChunkBytes c = impl_->chunk_bytes(row, impl_->locate(row));
    read_box(c, row.shape, offset_in_chunk, shape, dst, verify);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key '" + row.key + "': ");
  }
}

void ShardReader::read_chunk(const ChunkRecord& row, void* dst, bool verify) const {
  read(row, Shape(row.shape.size(), 0), row.shape, dst, verify);
}

void ShardReader::read_chunks(std::span<const ChunkRecord* const> rows, void* dst,
                              bool verify) const {
  std::vector<Location> locs(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    try {
      locs[i] = impl_->locate(*rows[i]);
    } catch (...) {
      rethrow_with_context("In " + path_ + ": reading key '" + rows[i]->key + "': ");
    }
  }
  std::vector<uint64_t> pos(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) pos[i] = locs[i].pos;
  try {
    read_byte_ranges(impl_->bytes, rows, pos, dst, [&](size_t i, char* bytes) {
      try {
        finish_in_place(impl_->chunk_bytes(*rows[i], locs[i]), bytes, verify);
      } catch (...) {
        rethrow_with_context("reading key '" + rows[i]->key + "': ");
      }
    });
  } catch (...) {
    rethrow_with_context("In " + path_ + ": ");
  }
}

void ShardReader::verify_chunk(const ChunkRecord& row) const {
  try {
    verify_streaming(impl_->chunk_bytes(row, impl_->locate(row)));
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key '" + row.key + "': ");
  }
}

bool ShardReader::enable_direct_io() { return impl_->bytes.enable_direct_io(); }

}  // namespace shardload
