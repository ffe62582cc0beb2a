#include "io/h5/vlen_check.h"

#include <algorithm>
#include <cstring>
#include <optional>
#include <set>

#include "core/error.h"
#include "io/h5/hdf5.h"

namespace shardload::h5 {
namespace {

/// Largest global heap collection read (HDF5 makes them 4 KiB, larger only for one big object).
constexpr uint64_t kMaxCollectionBytes = uint64_t{16} << 20;
/// Object header chunks and bytes walked to find an attribute.
constexpr int kMaxHeaderChunks = 64;
constexpr uint64_t kMaxHeaderBytes = uint64_t{1} << 20;

uint64_t align8(uint64_t x) { return (x + 7) / 8 * 8; }

}  // namespace

VlenCheck::VlenCheck(hid_t file, const FileBytes& bytes) : bytes_(bytes) {
  Handle fcpl = plist_handle(H5Fget_create_plist(file));
  size_t offsets = 0, lengths = 0;
  SHARDLOAD_H5(H5Pget_sizes(fcpl.get(), &offsets, &lengths));
  hsize_t userblock = 0;
  SHARDLOAD_H5(H5Pget_userblock(fcpl.get(), &userblock));
  if ((offsets != 4 && offsets != 8) || (lengths != 4 && lengths != 8)) {
    throw FormatError("the file uses " + std::to_string(offsets) + "-byte addresses and " +
                      std::to_string(lengths) + "-byte lengths (4 or 8 are read)");
  }
  offset_size_ = static_cast<int>(offsets);
  length_size_ = static_cast<int>(lengths);
  base_ = userblock;
}

uint64_t VlenCheck::decode(const unsigned char* p, int bytes) const {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = v << 8 | p[i];
  return v;
}

const VlenCheck::Collection& VlenCheck::collection(uint64_t address, const std::string& what) {
  if (auto it = collections_.find(address); it != collections_.end()) return it->second;
  const std::string where = what + ": global heap collection at address " + std::to_string(address);
  const uint64_t header = 8 + static_cast<uint64_t>(length_size_);
  if (address > bytes_.size() || bytes_.size() - address < base_ + header) {
    throw FormatError(where + " lies outside the file");
  }
  const uint64_t pos = base_ + address;
  unsigned char head[16] = {};
  bytes_.read_at(pos, header, head);
  if (std::memcmp(head, "GCOL", 4) != 0 || head[4] != 1) {
    throw FormatError(where + " is not a version-1 heap collection");
  }
  const uint64_t size = decode(head + 8, length_size_);
  if (size < header || size > kMaxCollectionBytes || size > bytes_.size() - pos) {
    throw FormatError(where + " declares " + std::to_string(size) + " bytes");
  }
  if ((collection_bytes_ += size) > bytes_.size()) {
    throw FormatError(where + " overlaps another collection (together they hold more bytes " +
                      "than the file)");
  }
  std::string chunk(size, '\0');
  bytes_.read_at(pos, size, chunk.data());
  const auto* c = reinterpret_cast<const unsigned char*>(chunk.data());
  // The walk of HDF5's H5HG__cache_heap_deserialize: objects one after another, each found
  // from the previous one's size; a remainder too small for an object header is free space.
  const uint64_t object_header = 8 + static_cast<uint64_t>(length_size_);
  std::vector<Object> objects;
  uint64_t p = header;
  while (p < size) {
    if (p + object_header > size) break;
    const uint64_t index = decode(c + p, 2);
    const uint64_t bytes = decode(c + p + 8, length_size_);
    const uint64_t need = index > 0 ? object_header + align8(bytes) : bytes;
    if (need == 0) {
      throw FormatError(where + " holds a free-space object of size 0 (HDF5 would loop forever)");
    }
    if (need > size - p) {
      // HDF5 moves its parse pointer by `need` without a check: past the end it stops, but a
      // size near 2^64 wraps the pointer backwards into memory before the collection (SIGSEGV,
      // found by fuzz_shard_file). HDF5 itself writes objects that tile the collection exactly.
      throw FormatError(where + " holds an object of " + std::to_string(bytes) +
                        " bytes at offset " + std::to_string(p) + " that reaches past its end (" +
                        std::to_string(size) + " bytes)");
    }
    if (index > 0) {
      if (objects.size() <= index) objects.resize(index + 1);
      objects[index] = Object{p, bytes, bytes <= size - p - object_header};
    }
    p += need;
  }
  return collections_.emplace(address, Collection{std::move(chunk), std::move(objects)})
      .first->second;
}

VlenCheck::Found VlenCheck::check_descriptor(const unsigned char* d, const std::string& what) {
  const uint64_t length = decode(d, 4);
  const uint64_t address = decode(d + 4, offset_size_);
  const uint64_t index = decode(d + 4 + offset_size_, 4);
  if (address == 0) return {};  // a null string: HDF5 reads no heap object
  const Collection& c = collection(address, what);
  const auto& objects = c.objects;
  if (index == 0 || index >= objects.size() || objects[index].begin == 0) {
    throw FormatError(what + ": a string refers to heap object " + std::to_string(index) +
                      " of the collection at address " + std::to_string(address) +
                      ", which does not exist");
  }
  const Object& o = objects[index];
  if (!o.fits || o.size != length) {
    throw FormatError(what + ": a string of " + std::to_string(length) +
                      " bytes is stored as a heap object of " + std::to_string(o.size) + " bytes" +
                      (o.fits ? "" : " reaching past its collection"));
  }
  return Found{&c, &o};
}

std::vector<std::string> VlenCheck::read_dataset(hid_t dataset, int64_t rows,
                                                 const std::string& what, uint64_t max_bytes) {
  std::vector<std::string> out;
  out.reserve(static_cast<size_t>(std::max<int64_t>(rows, 0)));
  const uint64_t object_header = 8 + static_cast<uint64_t>(length_size_);
  for_each_descriptor(dataset, rows, what, [&](const unsigned char* d) {
    const Found f = check_descriptor(d, what);
    if (!f.object) {
      out.emplace_back();
      return;
    }
    // check_descriptor: the object's `size` bytes follow its header inside the collection.
    const char* p = f.collection->bytes.data() + f.object->begin + object_header;
    const auto* nul = static_cast<const char*>(std::memchr(p, 0, f.object->size));
    const uint64_t len = nul ? static_cast<uint64_t>(nul - p) : f.object->size;
    if (len > max_bytes) {
      throw FormatError(what + " holds a string of " + std::to_string(len) + " bytes (at most " +
                        std::to_string(max_bytes) + ")");
    }
    out.emplace_back(p, len);
  });
  return out;
}

void VlenCheck::for_each_descriptor(hid_t dataset, int64_t rows, const std::string& what,
                                    const std::function<void(const unsigned char*)>& visit) {
  if (rows == 0) return;
  const Storage s = storage_of(dataset);
  if (s.layout != H5D_CONTIGUOUS || !s.has_offset) {
    throw FormatError(what +
                      ": a column of variable-length strings must be a contiguous, "
                      "written dataset");
  }
  const uint64_t each = 8 + static_cast<uint64_t>(offset_size_);
  if (s.bytes / each < static_cast<uint64_t>(rows)) {
    throw FormatError(what + ": stores " + std::to_string(s.bytes) + " bytes for " +
                      std::to_string(rows) + " strings");
  }
  // In slices of 64 Ki descriptors: memory stays small whatever the column's length.
  constexpr uint64_t kSlice = uint64_t{1} << 16;
  std::vector<unsigned char> raw;
  for (uint64_t first = 0; first < static_cast<uint64_t>(rows); first += kSlice) {
    const uint64_t n = std::min(kSlice, static_cast<uint64_t>(rows) - first);
    raw.resize(n * each);
    bytes_.read_at(s.offset + first * each, raw.size(), raw.data());
    for (uint64_t i = 0; i < n; ++i) visit(raw.data() + i * each);
  }
}

bool VlenCheck::walk_header(hid_t object, const std::string& what, const Visit& visit) {
  H5O_info_t info;
  SHARDLOAD_H5(H5Oget_info2(object, &info, H5O_INFO_BASIC));
  // The object header's chunks (version 1 or 2), each a run of messages.
  std::vector<std::pair<uint64_t, uint64_t>> chunks;  // (address, length)
  std::set<uint64_t> seen;
  int version = 0;
  unsigned v2_flags = 0;
  {
    unsigned char head[32] = {};
    if (info.addr > bytes_.size() || bytes_.size() - info.addr < base_ + 16) {
      throw FormatError(what + ": the object header lies outside the file");
    }
    const uint64_t pos = base_ + info.addr;
    bytes_.read_at(pos, std::min<uint64_t>(32, bytes_.size() - pos), head);
    if (head[0] == 1) {
      version = 1;
      chunks.emplace_back(info.addr + 16, decode(head + 8, 4));
    } else if (std::memcmp(head, "OHDR", 4) == 0 && head[4] == 2) {
      version = 2;
      v2_flags = head[5];
      uint64_t at = 6 + ((v2_flags & 0x20) ? 16 : 0) + ((v2_flags & 0x10) ? 4 : 0);
      const int width = 1 << (v2_flags & 3);
      chunks.emplace_back(info.addr + at + static_cast<uint64_t>(width), decode(head + at, width));
    } else {
      throw FormatError(what + ": unknown object header version");
    }
  }
  bool dense = false;
  uint64_t walked = 0;
  for (size_t k = 0; k < chunks.size(); ++k) {
    const auto [address, length] = chunks[k];
    if (k >= static_cast<size_t>(kMaxHeaderChunks) || (walked += length) > kMaxHeaderBytes ||
        !seen.insert(address).second) {
      throw FormatError(what + ": the object header is too long or loops");
    }
    if (address > bytes_.size() || length > bytes_.size() - address ||
        base_ > bytes_.size() - address - length) {
      throw FormatError(what + ": an object header chunk lies outside the file");
    }
    std::string chunk(length, '\0');
    bytes_.read_at(base_ + address, length, chunk.data());
    const auto* c = reinterpret_cast<const unsigned char*>(chunk.data());
    uint64_t p = 0, end = length;
    if (version == 2 && k > 0) {
      // A continuation chunk: "OCHK", messages, checksum.
      if (length < 8 || std::memcmp(c, "OCHK", 4) != 0) {
        throw FormatError(what + ": malformed object header continuation");
      }
      p = 4;
      end = length - 4;
    }
    while (true) {
      // Message header: v1 type(2) size(2) flags(1) reserved(3); v2 type(1) size(2) flags(1)
      // and, when the header tracks attribute creation order, a 2-byte index.
      const uint64_t mh = version == 1 ? 8 : 4;
      if (p + mh > end) break;
      const uint64_t type = version == 1 ? decode(c + p, 2) : c[p];
      const uint64_t size = version == 1 ? decode(c + p + 2, 2) : decode(c + p + 1, 2);
      const unsigned mflags = version == 1 ? c[p + 4] : c[p + 3];
      const uint64_t data = p + mh + (version == 2 && (v2_flags & 0x04) ? 2 : 0);
      if (data > end || size > end - data) break;
      const unsigned char* m = c + data;
      if (type == 0x10) {  // continuation: another chunk of messages
        if (size < static_cast<uint64_t>(offset_size_ + length_size_)) {
          throw FormatError(what + ": malformed continuation message");
        }
        chunks.emplace_back(decode(m, offset_size_), decode(m + offset_size_, length_size_));
      } else if (type == 0x15) {
        dense = true;  // attribute info: attributes may live in dense storage
      } else if (type == 0x0C && !(mflags & 0x02)) {
        if (visit(m, size)) return dense;
      }
      p = data + size;
    }
  }
  return dense;
}

namespace {

/// Where an attribute message's parts lie; nullopt when they do not fit in the message.
struct AttributeParts {
  uint64_t name = 0, name_size = 0, value = 0;
};

std::optional<AttributeParts> attribute_parts(const unsigned char* m, uint64_t size) {
  if (size < 8) return std::nullopt;
  const unsigned version = m[0];
  if (version < 1 || version > 3) return std::nullopt;
  auto u16 = [&](uint64_t at) { return static_cast<uint64_t>(m[at] | m[at + 1] << 8); };
  const uint64_t name_size = u16(2), dt_size = u16(4), ds_size = u16(6);
  const auto pad = [&](uint64_t x) { return version == 1 ? align8(x) : x; };
  AttributeParts parts;
  parts.name = version == 3 ? 9 : 8;
  parts.name_size = name_size;
  parts.value = parts.name + pad(name_size) + pad(dt_size) + pad(ds_size);
  if (parts.value > size || name_size == 0) return std::nullopt;
  // HDF5 copies the name up to its NUL: it must end exactly where its stored length says.
  const auto* name = m + parts.name;
  if (name[name_size - 1] != 0 || std::memchr(name, 0, name_size - 1) != nullptr) {
    return std::nullopt;
  }
  return parts;
}

}  // namespace

void VlenCheck::check_attribute_messages(hid_t object, const std::string& what) {
  walk_header(object, what, [&](const unsigned char* m, uint64_t size) {
    if (!attribute_parts(m, size)) {
      throw FormatError(what + ": an attribute message of its object header is malformed");
    }
    return false;
  });
}

void VlenCheck::check_attribute(hid_t object, const char* name) {
  const std::string what = std::string("attribute '") + name + "'";
  bool found = false;
  const bool dense = walk_header(object, what, [&](const unsigned char* m, uint64_t size) {
    const auto parts = attribute_parts(m, size);
    if (!parts || parts->name_size != std::strlen(name) + 1 ||
        std::memcmp(m + parts->name, name, parts->name_size - 1) != 0) {
      return false;
    }
    const uint64_t each = 8 + static_cast<uint64_t>(offset_size_);
    if (size - parts->value < each) {
      throw FormatError(what + ": its value is shorter than one string");
    }
    check_descriptor(m + parts->value, what);
    found = true;
    return true;
  });
  if (!found) {
    throw FormatError(what + (dense ? " is kept in dense attribute storage, which is not read"
                                    : " was not found in its object header"));
  }
}

}  // namespace shardload::h5
