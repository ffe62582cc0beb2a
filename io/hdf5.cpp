#include "io/hdf5.h"

#include <mutex>

#include "core/error.h"

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

}  // namespace

std::string error_stack() {
  std::string out;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &out);
  H5Eclear2(H5E_DEFAULT);
  return out.empty() ? "HDF5 error" : out;
}

void silence_errors() {
  static std::once_flag once;
  std::call_once(once, [] { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); });
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

namespace {

Handle simple_space(hsize_t n) { return space_handle(H5Screate_simple(1, &n, nullptr)); }

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
std::vector<T> read_numbers(hid_t loc, const char* name, hid_t mem_type) {
  Handle ds = dataset_handle(H5Dopen2(loc, name, H5P_DEFAULT));
  Handle space = space_handle(H5Dget_space(ds.get()));
  hssize_t n = SHARDLOAD_H5(H5Sget_simple_extent_npoints(space.get()));
  std::vector<T> values(static_cast<size_t>(n));
  if (n > 0) {
    SHARDLOAD_H5(H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()));
  }
  return values;
}

}  // namespace

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

std::vector<std::string> read_strings(hid_t loc, const char* name) {
  Handle ds = dataset_handle(H5Dopen2(loc, name, H5P_DEFAULT));
  Handle space = space_handle(H5Dget_space(ds.get()));
  hssize_t n = SHARDLOAD_H5(H5Sget_simple_extent_npoints(space.get()));
  Handle file_type = type_handle(H5Dget_type(ds.get()));
  if (H5Tget_class(file_type.get()) != H5T_STRING) {
    throw FormatError(std::string("dataset '") + name + "' does not hold strings");
  }
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(n));
  if (n == 0) return out;
  if (SHARDLOAD_H5(H5Tis_variable_str(file_type.get())) > 0) {
    Handle type = vlen_string_type();
    std::vector<char*> ptrs(static_cast<size_t>(n), nullptr);
    SHARDLOAD_H5(H5Dread(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, ptrs.data()));
    for (char* p : ptrs) out.emplace_back(p ? p : "");
#if H5_VERSION_GE(1, 12, 0)
    H5Treclaim(type.get(), space.get(), H5P_DEFAULT, ptrs.data());
#else
    H5Dvlen_reclaim(type.get(), space.get(), H5P_DEFAULT, ptrs.data());
#endif
  } else {
    size_t size = H5Tget_size(file_type.get());
    Handle type = type_handle(H5Tcopy(H5T_C_S1));
    SHARDLOAD_H5(H5Tset_size(type.get(), size));
    SHARDLOAD_H5(H5Tset_strpad(type.get(), H5T_STR_NULLPAD));
    std::vector<char> buf(size * static_cast<size_t>(n));
    SHARDLOAD_H5(H5Dread(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, buf.data()));
    for (hssize_t i = 0; i < n; ++i) {
      const char* p = buf.data() + static_cast<size_t>(i) * size;
      size_t len = 0;
      while (len < size && p[len]) ++len;
      out.emplace_back(p, len);
    }
  }
  return out;
}

void write_i64(hid_t loc, const char* name, const std::vector<int64_t>& values) {
  write_numbers(loc, name, values, H5T_STD_I64LE, H5T_NATIVE_INT64);
}
void write_u64(hid_t loc, const char* name, const std::vector<uint64_t>& values) {
  write_numbers(loc, name, values, H5T_STD_U64LE, H5T_NATIVE_UINT64);
}
std::vector<int64_t> read_i64(hid_t loc, const char* name) {
  return read_numbers<int64_t>(loc, name, H5T_NATIVE_INT64);
}
std::vector<uint64_t> read_u64(hid_t loc, const char* name) {
  return read_numbers<uint64_t>(loc, name, H5T_NATIVE_UINT64);
}

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

std::string read_attr_string(hid_t obj, const char* name) {
  Handle attr = attr_handle(H5Aopen(obj, name, H5P_DEFAULT));
  Handle file_type = type_handle(H5Aget_type(attr.get()));
  if (H5Tget_class(file_type.get()) != H5T_STRING) {
    throw FormatError(std::string("attribute '") + name + "' is not a string");
  }
  if (SHARDLOAD_H5(H5Tis_variable_str(file_type.get())) > 0) {
    Handle type = vlen_string_type();
    char* p = nullptr;
    SHARDLOAD_H5(H5Aread(attr.get(), type.get(), &p));
    std::string s = p ? p : "";
    H5free_memory(p);
    return s;
  }
  size_t size = H5Tget_size(file_type.get());
  std::string s(size, '\0');
  SHARDLOAD_H5(H5Aread(attr.get(), file_type.get(), s.data()));
  s.resize(s.find('\0') == std::string::npos ? size : s.find('\0'));
  return s;
}

int64_t read_attr_i64(hid_t obj, const char* name) {
  Handle attr = attr_handle(H5Aopen(obj, name, H5P_DEFAULT));
  int64_t v = 0;
  SHARDLOAD_H5(H5Aread(attr.get(), H5T_NATIVE_INT64, &v));
  return v;
}

}  // namespace shardload::h5
