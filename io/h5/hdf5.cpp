#include "io/h5/hdf5.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/shape.h"
#include "io/file_bytes.h"
#include "io/h5/format.h"
#include "io/h5/vlen_check.h"

namespace shardload::h5 {
namespace {

herr_t collect_error(unsigned n, const H5E_error2_t* err, void* data) {
  auto* out = static_cast<std::string*>(data);
  if (n < 3 && err->desc && *err->desc) {
    if (!out->empty()) out->append("; ");
    out->append(err->desc);
  }
  return 0;
}

std::string quoted(const std::string& name) { return "'" + name + "'"; }

}  // namespace

std::string error_stack() {
  std::string out;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &out);
  H5Eclear2(H5E_DEFAULT);
  return out.empty() ? "HDF5 error" : out;
}

namespace {
/// HDF5 registers an atexit handler that closes the files still open when the process ends. A
/// file whose close failed (ENOSPC while HDF5 flushed it) stays half-closed in HDF5's tables and
/// crashed that handler (SIGSEGV in H5F__close_cb at exit, seen after a save into a full disk).
/// shardload closes or abandons its files itself and needs nothing done at exit: no handler.
/// Runs when the library is loaded, before any HDF5 call initialises HDF5.
const bool no_hdf5_atexit = [] {
  H5dont_atexit();
  return true;
}();
}  // namespace

void silence_errors() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
}

namespace {

/// The scopes under watch and the thread watching them. Never destroyed (the thread may outlive
/// static destruction at exit).
class DeadlineMonitor {
 public:
  static DeadlineMonitor& get() {
    static DeadlineMonitor* monitor = new DeadlineMonitor();
    return *monitor;
  }
  bool enabled() const { return seconds_ > 0; }
  uint64_t add(const std::string& file) {
    std::lock_guard lock(mutex_);
    if (!started_) {
      std::thread([this] { watch(); }).detach();
      started_ = true;
    }
    const uint64_t id = ++next_;
    open_.emplace(id, Scope{std::chrono::steady_clock::now(), file});
    return id;
  }
  void remove(uint64_t id) {
    std::lock_guard lock(mutex_);
    open_.erase(id);
  }

 private:
  struct Scope {
    std::chrono::steady_clock::time_point start;
    std::string file;
  };
  DeadlineMonitor() {
    const char* env = std::getenv("SHARDLOAD_HDF5_DEADLINE");
    seconds_ = env ? std::atof(env) : 15.0;
  }
  void watch() {
    while (true) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      std::lock_guard lock(mutex_);
      const auto now = std::chrono::steady_clock::now();
      for (const auto& [id, scope] : open_) {
        const double held = std::chrono::duration<double>(now - scope.start).count();
        if (held < seconds_) continue;
        std::fprintf(stderr,
                     "shardload: In %s: HDF5 has not returned for %.0f s while reading the "
                     "file's structure: the file is malformed (HDF5 loops forever on some "
                     "corrupt files); giving up (exit code 3)\n",
                     scope.file.c_str(), held);
        std::fflush(stderr);
        std::_Exit(3);
      }
    }
  }
  std::mutex mutex_;
  std::map<uint64_t, Scope> open_;
  uint64_t next_ = 0;
  bool started_ = false;
  double seconds_ = 15.0;
};

}  // namespace

Deadline::Deadline(const std::string& file) {
  DeadlineMonitor& monitor = DeadlineMonitor::get();
  if (monitor.enabled()) id_ = monitor.add(file);
}

Deadline::~Deadline() {
  if (id_) DeadlineMonitor::get().remove(id_);
}

std::recursive_mutex& library_mutex() {
  static std::recursive_mutex mutex;
  return mutex;
}

template <typename T>
T check(T status, const char* what) {
  if (status < 0) throw FormatError(std::string(what) + " failed: " + error_stack());
  return status;
}
template int check<int>(int, const char*);
template long check<long>(long, const char*);
template long long check<long long>(long long, const char*);

void Handle::close(const char* what) {
  if (id_ < 0) return;
  herr_t status = closer_ ? closer_(id_) : 0;
  id_ = H5I_INVALID_HID;
  check(status, what);
}

Handle file_handle(hid_t id) { return Handle(check(id, "H5Fopen/create"), H5Fclose); }
Handle group_handle(hid_t id) { return Handle(check(id, "H5Gopen/create"), H5Gclose); }
Handle dataset_handle(hid_t id) { return Handle(check(id, "H5Dopen/create"), H5Dclose); }
Handle object_handle(hid_t id) { return Handle(check(id, "H5Oopen"), H5Oclose); }
Handle space_handle(hid_t id) { return Handle(check(id, "H5Screate"), H5Sclose); }
Handle type_handle(hid_t id) { return Handle(check(id, "H5Tcopy"), H5Tclose); }
Handle attr_handle(hid_t id) { return Handle(check(id, "H5Aopen/create"), H5Aclose); }
Handle plist_handle(hid_t id) { return Handle(check(id, "H5Pcreate"), H5Pclose); }

Handle vlen_string_type() {
  Handle t = type_handle(H5Tcopy(H5T_C_S1));
  SHARDLOAD_H5(H5Tset_size(t.get(), H5T_VARIABLE));
  SHARDLOAD_H5(H5Tset_cset(t.get(), H5T_CSET_UTF8));
  return t;
}

// ---- Opening files ---------------------------------------------------------------------------

Handle open_file(const std::string& path) {
  // HDF5 opens the path itself, blocking: a FIFO would hang it. Refused here, without blocking.
  check_regular_file(path);
  Handle fapl = plist_handle(H5Pcreate(H5P_FILE_ACCESS));
  SHARDLOAD_H5(H5Pset_fapl_sec2(fapl.get()));
  return file_handle(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()));
}

Handle open_image(const std::string& image) {
  Handle fapl = plist_handle(H5Pcreate(H5P_FILE_ACCESS));
  SHARDLOAD_H5(H5Pset_fapl_core(fapl.get(), 1 << 16, /*backing_store=*/0));
  SHARDLOAD_H5(H5Pset_file_image(fapl.get(), const_cast<char*>(image.data()), image.size()));
  // The core driver tells open files apart by name: a name used twice would hand back the file
  // opened first.
  static std::atomic<uint64_t> images{0};
  const std::string name = "in-memory image #" + std::to_string(images.fetch_add(1));
  return file_handle(H5Fopen(name.c_str(), H5F_ACC_RDONLY, fapl.get()));
}

int dup_descriptor(hid_t file) {
  Handle fapl = plist_handle(H5Fget_access_plist(file));
  if (SHARDLOAD_H5(H5Pget_driver(fapl.get())) != H5FD_SEC2) {
    throw FormatError("the file was not opened with the POSIX driver");
  }
  void* handle = nullptr;
  SHARDLOAD_H5(H5Fget_vfd_handle(file, fapl.get(), &handle));
  if (!handle) throw FormatError("HDF5 gave no file descriptor");
  int fd = ::fcntl(*static_cast<int*>(handle), F_DUPFD_CLOEXEC, 0);
  if (fd < 0)
    throw FormatError(std::string("dup of the file descriptor failed: ") + std::strerror(errno));
  return fd;
}

// ---- Objects ---------------------------------------------------------------------------------

bool link_exists(hid_t loc, const char* name) {
  return SHARDLOAD_H5(H5Lexists(loc, name, H5P_DEFAULT)) > 0;
}

void check_hard_path(hid_t loc, const std::string& path) {
  if (path.empty() || path.size() > static_cast<size_t>(kMaxStringBytes)) {
    throw FormatError("invalid HDF5 path of " + std::to_string(path.size()) + " bytes");
  }
  size_t pos = path[0] == '/' ? 1 : 0;
  if (pos == path.size()) throw FormatError("HDF5 path " + quoted(path) + " names the root group");
  while (pos <= path.size()) {
    size_t end = path.find('/', pos);
    if (end == std::string::npos) end = path.size();
    const std::string part = path.substr(pos, end - pos);
    if (part.empty() || part == "." || part == "..") {
      throw FormatError("HDF5 path " + quoted(path) + " has an empty, '.' or '..' component");
    }
    const std::string prefix = path.substr(0, end);
    if (SHARDLOAD_H5(H5Lexists(loc, prefix.c_str(), H5P_DEFAULT)) <= 0) {
      throw FormatError("no object " + quoted(prefix) + " in the file");
    }
    H5L_info_t info;
    SHARDLOAD_H5(H5Lget_info(loc, prefix.c_str(), &info, H5P_DEFAULT));
    if (info.type != H5L_TYPE_HARD) {
      const char* kind = info.type == H5L_TYPE_SOFT       ? "a soft link"
                         : info.type == H5L_TYPE_EXTERNAL ? "an external link (to another file)"
                                                          : "a user-defined link";
      throw FormatError("HDF5 path " + quoted(prefix) + " is " + kind +
                        "; only hard links inside the file are read");
    }
    pos = end + 1;
  }
}

namespace {

Handle open_object(hid_t loc, const std::string& path, H5I_type_t kind, const char* kind_name) {
  check_hard_path(loc, path);
  Handle obj = object_handle(H5Oopen(loc, path.c_str(), H5P_DEFAULT));
  if (H5Iget_type(obj.get()) != kind) {
    throw FormatError("HDF5 object " + quoted(path) + " is not a " + kind_name);
  }
  return obj;
}

}  // namespace

Handle open_dataset(hid_t loc, const std::string& path) {
  return open_object(loc, path, H5I_DATASET, "dataset");
}
Handle open_group(hid_t loc, const std::string& path) {
  return open_object(loc, path, H5I_GROUP, "group");
}

Storage storage_of(hid_t dataset) {
  Storage s;
  Handle dcpl = plist_handle(H5Dget_create_plist(dataset));
  s.layout = H5Pget_layout(dcpl.get());
  s.filters = SHARDLOAD_H5(H5Pget_nfilters(dcpl.get()));
  s.external_files = SHARDLOAD_H5(H5Pget_external_count(dcpl.get()));
  Handle space = space_handle(H5Dget_space(dataset));
  H5S_class_t cls = H5Sget_simple_extent_type(space.get());
  if (cls == H5S_SCALAR) {
    s.scalar = true;
  } else if (cls == H5S_SIMPLE) {
    int rank = SHARDLOAD_H5(H5Sget_simple_extent_ndims(space.get()));
    if (rank > kMaxDims) {
      throw FormatError("dataset has " + std::to_string(rank) + " dimensions (at most " +
                        std::to_string(kMaxDims) + ")");
    }
    std::vector<hsize_t> dims(static_cast<size_t>(rank));
    if (rank > 0) SHARDLOAD_H5(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr));
    for (hsize_t d : dims) {
      if (d > static_cast<hsize_t>(INT64_MAX)) throw FormatError("dataset extent overflows int64");
      s.dims.push_back(static_cast<int64_t>(d));
    }
  } else {
    throw FormatError("dataset has a null or unknown dataspace");
  }
  s.bytes = H5Dget_storage_size(dataset);
  if (s.layout == H5D_CONTIGUOUS && s.external_files == 0) {
    haddr_t addr = H5Dget_offset(dataset);
    H5Eclear2(H5E_DEFAULT);  // an unallocated dataset reports HADDR_UNDEF with an error
    if (addr != HADDR_UNDEF) {
      s.has_offset = true;
      s.offset = static_cast<uint64_t>(addr);
    }
  }
  return s;
}

std::string ElementType::describe() const {
  static const char* const kClasses[] = {"integer",  "float",           "time",     "string",
                                         "bitfield", "opaque",          "compound", "reference",
                                         "enum",     "variable-length", "array"};
  std::string c = cls >= 0 && cls < 11 ? kClasses[cls] : "unknown";
  std::string s = c + ", " + std::to_string(size) + " bytes";
  if (cls == H5T_INTEGER || cls == H5T_ENUM) {
    s += is_signed ? ", signed" : ", unsigned";
  }
  if (precision != size * 8 || bit_offset != 0) {
    s += ", precision " + std::to_string(precision) + " bits at offset " +
         std::to_string(bit_offset);
  }
  if (order == H5T_ORDER_BE) s += ", big-endian";
  return s;
}

ElementType element_type(hid_t type) {
  ElementType t;
  t.cls = H5Tget_class(type);
  t.size = H5Tget_size(type);
  if (t.cls == H5T_INTEGER || t.cls == H5T_FLOAT || t.cls == H5T_ENUM) {
    Handle base;
    hid_t num = type;
    if (t.cls == H5T_ENUM) {
      base = type_handle(H5Tget_super(type));
      num = base.get();
      t.enum_members = SHARDLOAD_H5(H5Tget_nmembers(type));
    }
    t.order = H5Tget_order(num);
    t.precision = H5Tget_precision(num);
    int off = H5Tget_offset(num);
    t.bit_offset = off < 0 ? SIZE_MAX : static_cast<size_t>(off);
    if (t.cls == H5T_FLOAT) {
      SHARDLOAD_H5(H5Tget_fields(num, &t.spos, &t.epos, &t.esize, &t.mpos, &t.msize));
      t.ebias = H5Tget_ebias(num);
      t.norm = H5Tget_norm(num);
    } else {
      t.is_signed = H5Tget_sign(num) == H5T_SGN_2;
      if (t.cls == H5T_ENUM && H5Tget_class(num) != H5T_INTEGER) t.cls = H5T_NO_CLASS;
    }
  } else if (t.cls == H5T_COMPOUND && H5Tget_nmembers(type) == 2) {
    // Only two float members are looked at (no recursion into anything else).
    for (unsigned i = 0; i < 2; ++i) {
      if (H5Tget_member_class(type, i) != H5T_FLOAT) {
        t.member_names.clear();
        t.member_offsets.clear();
        t.member_types.clear();
        break;
      }
      char* name = H5Tget_member_name(type, i);
      t.member_names.emplace_back(name ? name : "");
      H5free_memory(name);
      t.member_offsets.push_back(H5Tget_member_offset(type, i));
      Handle member = type_handle(H5Tget_member_type(type, i));
      t.member_types.push_back(element_type(member.get()));
    }
  }
  H5Eclear2(H5E_DEFAULT);
  return t;
}

namespace {

/// HDF5 converts integers by their bit fields; a type whose fields do not fit its bytes makes
/// the conversion read out of bounds (found by fuzzing). Checked before any integer is converted.
void check_integer_type(hid_t type, const std::string& what) {
  const ElementType t = element_type(type);
  const bool ok = t.cls == H5T_INTEGER && t.size >= 1 && t.size <= 8 && t.precision >= 1 &&
                  t.bit_offset < t.size * 8 && t.precision <= t.size * 8 - t.bit_offset &&
                  (t.order == H5T_ORDER_LE || t.order == H5T_ORDER_BE);
  if (!ok) throw FormatError(what + " holds integers of a malformed type (" + t.describe() + ")");
}

}  // namespace

// ---- Columns ---------------------------------------------------------------------------------

namespace {

Handle simple_space(hsize_t n) { return space_handle(H5Screate_simple(1, &n, nullptr)); }

/// Opens a column and checks it (see column_rows); returns the dataset, its rows and file type.
struct Column {
  Handle ds;
  Handle type;
  int64_t rows = 0;
};

Column open_column(hid_t loc, const char* name, H5T_class_t cls, const ColumnLimits& limits) {
  try {
    Column c;
    c.ds = open_dataset(loc, name);
    c.type = type_handle(H5Dget_type(c.ds.get()));
    const H5T_class_t got = H5Tget_class(c.type.get());
    if (got != cls) {
      throw FormatError(std::string("holds ") + element_type(c.type.get()).describe() +
                        " elements, expected " + (cls == H5T_STRING ? "strings" : "integers"));
    }
    const bool vlen = cls == H5T_STRING && SHARDLOAD_H5(H5Tis_variable_str(c.type.get())) > 0;
    const size_t elem = vlen ? 16 : H5Tget_size(c.type.get());  // a vlen string: a 16-byte heap id
    if (cls == H5T_INTEGER && (elem == 0 || elem > 8)) {
      throw FormatError("holds " + std::to_string(elem) + "-byte integers (at most 8)");
    }
    if (cls == H5T_INTEGER) check_integer_type(c.type.get(), "it");
    if (cls == H5T_STRING && !vlen && (elem == 0 || elem > static_cast<size_t>(kMaxStringBytes))) {
      throw FormatError("holds fixed-length strings of " + std::to_string(elem) +
                        " bytes (at most " + std::to_string(kMaxStringBytes) + ")");
    }
    Storage s = storage_of(c.ds.get());
    if (s.scalar || s.dims.size() != 1) {
      throw FormatError("is not one-dimensional (" + std::to_string(s.dims.size()) +
                        " dimensions)");
    }
    if (s.layout == H5D_VIRTUAL || s.external_files > 0 || s.filters > 0) {
      throw FormatError("is virtual, filtered or stored in another file");
    }
    c.rows = s.dims[0];
    if (c.rows > limits.max_rows) {
      throw FormatError("declares " + std::to_string(c.rows) + " rows (at most " +
                        std::to_string(limits.max_rows) + ")");
    }
    const uint64_t need = checked_mul(static_cast<uint64_t>(c.rows), uint64_t{elem}, name);
    if (s.bytes < need || s.bytes > limits.file_size ||
        (s.has_offset && (s.offset > limits.file_size || s.bytes > limits.file_size - s.offset))) {
      throw FormatError("declares " + std::to_string(c.rows) + " rows (" + std::to_string(need) +
                        " bytes) but stores " + std::to_string(s.bytes) + " bytes in a file of " +
                        std::to_string(limits.file_size));
    }
    return c;
  } catch (...) {
    rethrow_with_context(std::string("dataset '") + name + "': ");
  }
}

template <typename T>
void write_numbers(hid_t loc, const char* name, const std::vector<T>& values, hid_t file_type,
                   hid_t mem_type) {
  Handle space = simple_space(values.size());
  Handle ds = dataset_handle(
      H5Dcreate2(loc, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!values.empty()) {
    SHARDLOAD_H5(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()));
  }
}

template <typename T>
std::vector<T> read_numbers(hid_t loc, const char* name, hid_t mem_type,
                            const ColumnLimits& limits) {
  Column c = open_column(loc, name, H5T_INTEGER, limits);
  std::vector<T> values(static_cast<size_t>(c.rows));
  if (c.rows > 0) {
    SHARDLOAD_H5(H5Dread(c.ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()));
  }
  return values;
}

void check_string_length(size_t len, const char* what) {
  if (len > static_cast<size_t>(kMaxStringBytes)) {
    throw FormatError(std::string(what) + " holds a string of " + std::to_string(len) +
                      " bytes (at most " + std::to_string(kMaxStringBytes) + ")");
  }
}

}  // namespace

int64_t column_rows(hid_t loc, const char* name, H5T_class_t cls, const ColumnLimits& limits) {
  return open_column(loc, name, cls, limits).rows;
}

void write_strings(hid_t loc, const char* name, const std::vector<std::string>& values) {
  Handle type = vlen_string_type();
  std::vector<const char*> ptrs;
  ptrs.reserve(values.size());
  for (const auto& v : values) ptrs.push_back(v.c_str());
  Handle space = simple_space(values.size());
  Handle ds = dataset_handle(
      H5Dcreate2(loc, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!values.empty()) {
    SHARDLOAD_H5(H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()));
  }
}

std::vector<std::string> read_strings(hid_t loc, const char* name, const ColumnLimits& limits,
                                      VlenCheck& vlen) {
  Column c = open_column(loc, name, H5T_STRING, limits);
  const size_t n = static_cast<size_t>(c.rows);
  if (n == 0) return {};
  std::string what = std::string("dataset '") + name + "'";
  if (SHARDLOAD_H5(H5Tis_variable_str(c.type.get())) > 0) {
    // Decoded from the file's bytes by the code that checks them: HDF5's conversion never runs
    // on them, and its allocation per string is saved.
    return vlen.read_dataset(c.ds.get(), c.rows, what, static_cast<uint64_t>(kMaxStringBytes));
  }
  const size_t size = H5Tget_size(c.type.get());
  Handle type = type_handle(H5Tcopy(H5T_C_S1));
  SHARDLOAD_H5(H5Tset_size(type.get(), size));
  SHARDLOAD_H5(H5Tset_strpad(type.get(), H5T_STR_NULLPAD));
  std::vector<char> buf(size * n);
  SHARDLOAD_H5(H5Dread(c.ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()));
  std::vector<std::string> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const char* p = buf.data() + i * size;
    size_t len = 0;
    while (len < size && p[len]) ++len;
    out.emplace_back(p, len);
  }
  return out;
}

void write_i64(hid_t loc, const char* name, const std::vector<int64_t>& values) {
  write_numbers(loc, name, values, H5T_STD_I64LE, H5T_NATIVE_INT64);
}
void write_u64(hid_t loc, const char* name, const std::vector<uint64_t>& values) {
  write_numbers(loc, name, values, H5T_STD_U64LE, H5T_NATIVE_UINT64);
}
std::vector<int64_t> read_i64(hid_t loc, const char* name, const ColumnLimits& limits) {
  return read_numbers<int64_t>(loc, name, H5T_NATIVE_INT64, limits);
}
std::vector<uint64_t> read_u64(hid_t loc, const char* name, const ColumnLimits& limits) {
  return read_numbers<uint64_t>(loc, name, H5T_NATIVE_UINT64, limits);
}

void write_bytes(hid_t loc, const char* name, const std::string& bytes) {
  Handle space = simple_space(bytes.size());
  Handle ds = dataset_handle(
      H5Dcreate2(loc, name, H5T_STD_U8LE, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  if (!bytes.empty()) {
    SHARDLOAD_H5(H5Dwrite(ds.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()));
  }
}

std::string read_bytes(hid_t loc, const char* name, const ColumnLimits& limits) {
  Column c = open_column(loc, name, H5T_INTEGER, limits);
  if (H5Tget_size(c.type.get()) != 1) {
    throw FormatError(std::string("'") + name + "' holds " + element_type(c.type.get()).describe() +
                      " elements, expected bytes");
  }
  std::string bytes(static_cast<size_t>(c.rows), '\0');
  if (c.rows > 0) {
    SHARDLOAD_H5(
        H5Dread(c.ds.get(), H5T_NATIVE_UCHAR, H5S_ALL, H5S_ALL, H5P_DEFAULT, bytes.data()));
  }
  return bytes;
}

// ---- Attributes ------------------------------------------------------------------------------

void write_attr(hid_t obj, const char* name, const std::string& value) {
  Handle type = vlen_string_type();
  Handle space = space_handle(H5Screate(H5S_SCALAR));
  Handle attr =
      attr_handle(H5Acreate2(obj, name, type.get(), space.get(), H5P_DEFAULT, H5P_DEFAULT));
  const char* p = value.c_str();
  SHARDLOAD_H5(H5Awrite(attr.get(), type.get(), &p));
}

void write_attr(hid_t obj, const char* name, int64_t value) {
  Handle space = space_handle(H5Screate(H5S_SCALAR));
  Handle attr =
      attr_handle(H5Acreate2(obj, name, H5T_STD_I64LE, space.get(), H5P_DEFAULT, H5P_DEFAULT));
  SHARDLOAD_H5(H5Awrite(attr.get(), H5T_NATIVE_INT64, &value));
}

bool has_attr(hid_t obj, const char* name) { return SHARDLOAD_H5(H5Aexists(obj, name)) > 0; }

namespace {

/// Opens an attribute that must hold exactly one value (a scalar dataspace) of class `cls`.
std::pair<Handle, Handle> open_scalar_attr(hid_t obj, const char* name, H5T_class_t cls,
                                           const char* expected) {
  Handle attr = attr_handle(H5Aopen(obj, name, H5P_DEFAULT));
  Handle space = space_handle(H5Aget_space(attr.get()));
  if (H5Sget_simple_extent_type(space.get()) != H5S_SCALAR) {
    hssize_t n = H5Sget_simple_extent_npoints(space.get());
    throw FormatError(std::string("attribute '") + name + "' must hold one " + expected +
                      " (a scalar), it holds " + std::to_string(n < 0 ? 0 : n) + " values");
  }
  Handle type = type_handle(H5Aget_type(attr.get()));
  if (H5Tget_class(type.get()) != cls) {
    throw FormatError(std::string("attribute '") + name + "' must hold " + expected +
                      ", it holds " + element_type(type.get()).describe());
  }
  return {std::move(attr), std::move(type)};
}

}  // namespace

std::string read_attr_string(hid_t obj, const char* name, VlenCheck& vlen) {
  auto [attr, file_type] = open_scalar_attr(obj, name, H5T_STRING, "string");
  const std::string what = std::string("attribute '") + name + "'";
  if (SHARDLOAD_H5(H5Tis_variable_str(file_type.get())) > 0) {
    vlen.check_attribute(obj, name);
    Handle type = vlen_string_type();
    char* p = nullptr;
    if (H5Aread(attr.get(), type.get(), &p) < 0) {
      const std::string stack = error_stack();
      H5free_memory(p);
      throw FormatError(what + ": H5Aread failed: " + stack);
    }
    size_t len = p ? std::strlen(p) : 0;
    std::string s = len <= static_cast<size_t>(kMaxStringBytes) ? std::string(p ? p : "", len) : "";
    H5free_memory(p);
    check_string_length(len, what.c_str());
    return s;
  }
  size_t size = H5Tget_size(file_type.get());
  check_string_length(size, what.c_str());
  Handle type = type_handle(H5Tcopy(H5T_C_S1));
  SHARDLOAD_H5(H5Tset_size(type.get(), std::max<size_t>(size, 1)));
  SHARDLOAD_H5(H5Tset_strpad(type.get(), H5T_STR_NULLPAD));
  std::string s(std::max<size_t>(size, 1), '\0');
  SHARDLOAD_H5(H5Aread(attr.get(), type.get(), s.data()));
  s.resize(std::min(s.find('\0'), size));
  return s;
}

int64_t read_attr_i64(hid_t obj, const char* name) {
  auto [attr, file_type] = open_scalar_attr(obj, name, H5T_INTEGER, "integer");
  check_integer_type(file_type.get(), std::string("attribute '") + name + "'");
  int64_t v = 0;
  SHARDLOAD_H5(H5Aread(attr.get(), H5T_NATIVE_INT64, &v));
  return v;
}

}  // namespace shardload::h5
