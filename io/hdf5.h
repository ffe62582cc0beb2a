// Thin RAII layer over the HDF5 C API: move-only handles and one checked call wrapper that turns
// the HDF5 error stack into a FormatError. Only io/ includes this header.
#pragma once

#include <hdf5.h>

#include <string>
#include <utility>
#include <vector>

namespace shardload::h5 {

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

#define SHARDLOAD_H5(call) ::shardload::h5::check((call), #call)

Handle file_handle(hid_t id);
Handle group_handle(hid_t id);
Handle dataset_handle(hid_t id);
Handle space_handle(hid_t id);
Handle type_handle(hid_t id);
Handle attr_handle(hid_t id);
Handle plist_handle(hid_t id);

/// Variable-length UTF-8 string type (h5py's string_dtype()).
Handle vlen_string_type();

/// Writes a 1-D dataset of variable-length UTF-8 strings.
void write_strings(hid_t loc, const char* name, const std::vector<std::string>& values);
/// Reads a 1-D dataset of strings (variable-length or fixed-length, as h5py may write either).
std::vector<std::string> read_strings(hid_t loc, const char* name);
/// Writes a 1-D dataset of int64 / uint64 / int32.
void write_i64(hid_t loc, const char* name, const std::vector<int64_t>& values);
void write_u64(hid_t loc, const char* name, const std::vector<uint64_t>& values);
/// Reads a 1-D integer dataset of any integer file type, converted to int64 / uint64.
std::vector<int64_t> read_i64(hid_t loc, const char* name);
std::vector<uint64_t> read_u64(hid_t loc, const char* name);

/// Scalar attributes on an object.
void write_attr(hid_t obj, const char* name, const std::string& value);
void write_attr(hid_t obj, const char* name, int64_t value);
bool has_attr(hid_t obj, const char* name);
std::string read_attr_string(hid_t obj, const char* name);
int64_t read_attr_i64(hid_t obj, const char* name);

}  // namespace shardload::h5
