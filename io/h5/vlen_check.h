// Variable-length strings and attribute messages of an untrusted HDF5 file, checked before HDF5
// reads them. HDF5 1.10
// trusts its global heap: a heap collection whose free-space object has size 0 makes it loop
// forever, and a string whose heap object is missing, larger than the string or outside its
// collection makes it copy out of bounds (SIGSEGV). Both were found by fuzz_shard_file. So
// before any variable-length string is read, its descriptor (length, heap collection, object)
// is read from the file's bytes and the collection is parsed here the way HDF5 will parse it.
// The strings of a column are then decoded here too (read_dataset), from the same checked bytes:
// HDF5's conversion, an allocation and a lookup per string, never runs on them. Only io/
// includes this header.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "io/file_bytes.h"

namespace shardload::h5 {

class VlenCheck {
 public:
  /// For `file`, open in HDF5, whose bytes are `bytes`.
  VlenCheck(hid_t file, const FileBytes& bytes);

  /// Checks every string of a 1-D dataset of `rows` variable-length strings (such a dataset must
  /// be contiguous, h5py's default, so that its descriptors can be read from the file) and
  /// decodes them from the file's bytes (the descriptors, then the heap objects they name), as
  /// HDF5 would return them: each up to its first NUL, a null string as "". HDF5's own
  /// conversion costs a heap allocation and a descriptor lookup per string; this one, a copy. A
  /// string longer than `max_bytes` (after the NUL cut) is a FormatError naming `what`.
  std::vector<std::string> read_dataset(hid_t dataset, int64_t rows, const std::string& what,
                                        uint64_t max_bytes);
  /// Checks the scalar variable-length string attribute `name` of `object`, found in the
  /// object's header (attributes in dense storage are refused).
  void check_attribute(hid_t object, const char* name);
  /// Checks every attribute message in `object`'s header before HDF5 looks up an attribute:
  /// HDF5 copies an attribute's name up to its NUL, past the message when the NUL is missing.
  void check_attribute_messages(hid_t object, const std::string& what);

 private:
  /// Calls visit(message, size) for each attribute message of the object's header until it
  /// returns true; returns whether the header points to dense attribute storage.
  using Visit = std::function<bool(const unsigned char*, uint64_t)>;
  bool walk_header(hid_t object, const std::string& what, const Visit& visit);
  struct Object {
    uint64_t begin = 0;  ///< offset of the object's header inside the collection
    uint64_t size = 0;
    bool fits = false;  ///< its bytes lie inside the collection
  };
  /// A parsed global heap collection: its bytes and its objects by index.
  struct Collection {
    std::string bytes;
    std::vector<Object> objects;
  };
  /// The collection and object a string's descriptor names, checked; nullptr for a null string.
  struct Found {
    const Collection* collection = nullptr;
    const Object* object = nullptr;
  };
  Found check_descriptor(const unsigned char* d, const std::string& what);
  /// Calls visit(descriptor) for each of the dataset's `rows` descriptors, read in slices.
  void for_each_descriptor(hid_t dataset, int64_t rows, const std::string& what,
                           const std::function<void(const unsigned char*)>& visit);
  const Collection& collection(uint64_t address, const std::string& what);
  uint64_t decode(const unsigned char* p, int bytes) const;

  const FileBytes& bytes_;
  uint64_t base_ = 0;    ///< file position of HDF5 address 0 (the user block's size)
  int offset_size_ = 8;  ///< bytes of an address in the file
  int length_size_ = 8;  ///< bytes of a length in the file
  std::map<uint64_t, Collection> collections_;
  /// Bytes of the collections kept: HDF5 writes them side by side, so they add up to at most
  /// the file's size; more means collections that overlap (crafted), refused.
  uint64_t collection_bytes_ = 0;
};

}  // namespace shardload::h5
