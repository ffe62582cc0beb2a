// Thin RAII layer over the HDF5 C API: move-only handles, one checked call wrapper that turns
// the HDF5 error stack into a FormatError, and the checks every object of an untrusted file goes
// through before it is read (kind, class, dataspace, storage). Only io/ includes this header.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace shardload::h5 {

class VlenCheck;

/// Owns one HDF5 identifier and closes it with the matching H5*close. A move leaves the source
/// invalid. The destructor never throws.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle() = default;
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& other) noexcept
      : id_(std::exchange(other.id_, H5I_INVALID_HID)), closer_(other.closer_) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, H5I_INVALID_HID);
      closer_ = other.closer_;
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }

  hid_t get() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset() {
    if (id_ >= 0 && closer_) closer_(id_);
    id_ = H5I_INVALID_HID;
  }
  /// Closes now and reports a failure (e.g. a failed flush when closing a file).
  void close(const char* what);

 private:
  hid_t id_ = H5I_INVALID_HID;
  Closer closer_ = nullptr;
};

/// Throws FormatError("<what>: <HDF5 error stack>") when `status` is negative; returns it
/// otherwise. Every raw HDF5 call goes through this (via SHARDLOAD_H5).
template <typename T>
T check(T status, const char* what);
/// The innermost messages of the current HDF5 error stack, joined.
std::string error_stack();
/// Turns off HDF5's own printing of error stacks (we report them in exceptions). Idempotent.
void silence_errors();
/// The HDF5 library is not thread-safe: readers whose HDF5 calls may run off the main thread
/// (ShardReader's lazy prepare on a reader thread) hold this lock around them.
std::recursive_mutex& library_mutex();

#define SHARDLOAD_H5(call) ::shardload::h5::check((call), #call)

/// Bounds the time HDF5 may spend on an untrusted file's structure. HDF5 1.10 loops forever on
/// some corrupt files (a global heap collection holding a free-space object of size 0, met by
/// any variable-length string read), and a call into HDF5 cannot be interrupted. While a Deadline
/// lives, a monitor thread watches it; when it has lived longer than SHARDLOAD_HDF5_DEADLINE
/// seconds (default 15; 0 turns the watch off), the monitor prints "shardload: In <file>: ..." to
/// stderr and ends the process with exit code 3, a corrupt file's code (under mpirun, mpirun
/// ends the job with it). Scopes are short: one open, one column, one dataset lookup.
class Deadline {
 public:
  explicit Deadline(const std::string& file);
  ~Deadline();
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;

 private:
  uint64_t id_ = 0;
};

Handle file_handle(hid_t id);
Handle group_handle(hid_t id);
Handle dataset_handle(hid_t id);
Handle object_handle(hid_t id);
Handle space_handle(hid_t id);
Handle type_handle(hid_t id);
Handle attr_handle(hid_t id);
Handle plist_handle(hid_t id);

// ---- Opening files ---------------------------------------------------------------------------

/// Opens `path` read-only with the POSIX (sec2) driver, whose descriptor dup_descriptor() hands
/// out, so that tensor bytes can be read by pread from the very file HDF5 opened.
Handle open_file(const std::string& path);
/// Opens an in-memory HDF5 file image (core driver, nothing on disk); HDF5 copies the bytes.
Handle open_image(const std::string& image);
/// A new descriptor (close-on-exec) of the file HDF5 holds open for `file` (opened by
/// open_file). The caller owns it.
int dup_descriptor(hid_t file);

// ---- Objects, checked before use -------------------------------------------------------------

/// True when `loc` has a link called `name` (a single name, no path).
bool link_exists(hid_t loc, const char* name);
/// Checks that `path` is a plain HDF5 path ("/a/b" or "a/b": no empty, "." or ".." component,
/// at most kMaxStringBytes) and that each of its links is a hard link: no soft or external link
/// and nothing user-defined, so nothing it names lies outside this file. Throws FormatError.
void check_hard_path(hid_t loc, const std::string& path);
/// Opens the dataset / group at `path` after check_hard_path, checking the object's kind.
Handle open_dataset(hid_t loc, const std::string& path);
Handle open_group(hid_t loc, const std::string& path);

/// Where a dataset's elements are stored, as far as reading them by file offset is concerned.
struct Storage {
  H5D_layout_t layout = H5D_LAYOUT_ERROR;
  int filters = 0;            ///< filters in the pipeline (compression, shuffle, ...)
  int external_files = 0;     ///< H5Pget_external_count: storage in other files
  bool has_offset = false;    ///< H5Dget_offset is defined (contiguous and allocated)
  uint64_t offset = 0;        ///< file position of the first byte (userblock included)
  uint64_t bytes = 0;         ///< H5Dget_storage_size
  std::vector<int64_t> dims;  ///< the dataspace's extents (empty for a scalar)
  bool scalar = false;        ///< H5S_SCALAR (a 0-d dataset)
};
/// Reads the storage facts of an open dataset. Throws FormatError for a null dataspace or
/// more than kMaxDims dimensions.
Storage storage_of(hid_t dataset);

/// An element type, described by fields that can be compared without HDF5 calls.
struct ElementType {
  H5T_class_t cls = H5T_NO_CLASS;
  size_t size = 0;
  H5T_order_t order = H5T_ORDER_NONE;
  size_t precision = 0, bit_offset = 0;
  bool is_signed = false;  ///< integers (the base type for enums)
  size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0, ebias = 0;  ///< floats
  H5T_norm_t norm = H5T_NORM_ERROR;                                      ///< floats
  int enum_members = 0;
  /// A compound of two float members (how h5py stores complex numbers: "r" and "i"): their
  /// names, byte offsets and types; empty for every other compound.
  std::vector<std::string> member_names;
  std::vector<size_t> member_offsets;
  std::vector<ElementType> member_types;
  std::string describe() const;
};
ElementType element_type(hid_t type);

// ---- Columns: 1-D datasets read whole, bounded first -----------------------------------------

/// What a column may declare: at most `max_rows` rows, stored inside a file of `file_size`
/// bytes.
struct ColumnLimits {
  int64_t max_rows;
  uint64_t file_size;
};

/// The number of rows of the 1-D column `name` in `loc`, after checking, without reading it:
/// a hard link to a dataset, 1-D, elements of class `cls` (H5T_STRING or H5T_INTEGER, at most 8
/// bytes), no filters, no external storage, not virtual, at most `limits.max_rows` rows, and
/// the bytes its extent needs really stored (H5Dget_storage_size, inside the file).
int64_t column_rows(hid_t loc, const char* name, H5T_class_t cls, const ColumnLimits& limits);

/// Writes a 1-D dataset of variable-length UTF-8 strings.
void write_strings(hid_t loc, const char* name, const std::vector<std::string>& values);
/// Reads a checked 1-D column of strings (variable- or fixed-length, as h5py writes either);
/// each string at most kMaxStringBytes. Variable-length strings are checked and decoded by
/// `vlen` (VlenCheck::read_dataset).
std::vector<std::string> read_strings(hid_t loc, const char* name, const ColumnLimits& limits,
                                      VlenCheck& vlen);
/// Writes a 1-D dataset of int64 / uint64.
void write_i64(hid_t loc, const char* name, const std::vector<int64_t>& values);
void write_u64(hid_t loc, const char* name, const std::vector<uint64_t>& values);
/// Reads a checked 1-D column of any integer type, converted to int64 / uint64.
std::vector<int64_t> read_i64(hid_t loc, const char* name, const ColumnLimits& limits);
std::vector<uint64_t> read_u64(hid_t loc, const char* name, const ColumnLimits& limits);
/// Writes a 1-D dataset of bytes (uint8) / reads a checked one (any 1-byte integer type).
void write_bytes(hid_t loc, const char* name, const std::string& bytes);
std::string read_bytes(hid_t loc, const char* name, const ColumnLimits& limits);

// ---- Attributes: one value each ------------------------------------------------------------

/// Scalar attributes on an object.
void write_attr(hid_t obj, const char* name, const std::string& value);
void write_attr(hid_t obj, const char* name, int64_t value);
bool has_attr(hid_t obj, const char* name);
/// Reads a scalar string attribute (at most kMaxStringBytes); a variable-length one passes `vlen`
/// first. Throws FormatError naming the attribute when it is not a scalar of class string.
std::string read_attr_string(hid_t obj, const char* name, VlenCheck& vlen);
/// Reads a scalar integer attribute. Throws FormatError naming the attribute when it is not a
/// scalar of class integer.
int64_t read_attr_i64(hid_t obj, const char* name);

}  // namespace shardload::h5
