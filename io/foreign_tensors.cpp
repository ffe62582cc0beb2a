#include "io/foreign_tensors.h"

#include <algorithm>
#include <new>
#include <unordered_map>

#include "core/error.h"
#include "io/key_text.h"
#include "io/pt_layout.h"
#include "io/read_budget.h"
#include "io/safetensors_header.h"
#include "io/view_cover.h"

namespace shardload {
namespace {

/// A buffer of `n` bytes, not zeroed (every byte is written before it is read).
std::shared_ptr<char[]> allocate(uint64_t n) {
  return std::shared_ptr<char[]>(new char[std::max<uint64_t>(n, 1)]);
}

}  // namespace

const ViewCover& check_view_cover(const ViewCover& cover, const Shape& shape) {
  int64_t most = 0;
  if (__builtin_mul_overflow(std::max<int64_t>(cover.span(), 1 << 16), kMaxViewVisitsPerElement,
                             &most) ||
      cover.work() > most) {
    throw FormatError("a view of shape " + shape_str(shape) + " whose elements overlap " +
                      std::to_string(cover.work()) + " times over " + std::to_string(cover.span()) +
                      " stored elements (at most " + std::to_string(kMaxViewVisitsPerElement) +
                      " visits each)");
  }
  return cover;
}

void check_bool_view(const unsigned char* bytes, const Shape& shape, const Shape& stride,
                     uint64_t file_pos) {
  const ViewCover cover(shape, stride);
  const int64_t bad = first_bad_bool(check_view_cover(cover, shape), bytes);
  if (bad < 0) return;
  throw FormatError("bool element " + std::to_string(bad) +
                    " of the stored bytes the view covers (byte " + std::to_string(file_pos + bad) +
                    " of the file) holds byte value " + std::to_string(bytes[bad]) +
                    " (a bool is 0 or 1)");
}

ForeignContents read_pt_tensors(const FileBytes& file, const std::string& select) {
  PtLayout layout = read_pt_layout(file, select);
  ForeignContents out;
  out.metadata = std::move(layout.scalars);
  out.skipped = std::move(layout.skipped);
  out.other_tensors = std::move(layout.other_tensors);
  out.tensors.reserve(layout.tensors.size());
  // Storages are read once, whole: distinct zip members, so at most the file's bytes together.
  std::unordered_map<std::string, std::shared_ptr<char[]>> storages;
  ReadBudget views(file.size() + kViewFloorBytes, "views copied contiguous (the file's size + " +
                                                      std::to_string(kViewFloorBytes) +
                                                      " bytes in all; a stride-0 expansion?)");
  for (PtTensor& t : layout.tensors) {
    const std::string key = t.key;
    try {
      ForeignTensor f;
      f.key = std::move(t.key);
      f.dtype = t.dtype;
      f.shape = t.shape;
      f.nbytes = t.nbytes();
      const int64_t elem = dtype_size(t.dtype);
      if (f.nbytes == 0) {
        out.tensors.push_back(std::move(f));
        continue;
      }
      auto [it, fresh] = storages.try_emplace(t.record);
      if (fresh) {
        it->second = allocate(t.record_bytes);
        file.read_at(t.record_pos, t.record_bytes, it->second.get());
      }
      char* first = it->second.get() + (t.data_pos() - t.record_pos);
      // Every byte the view covers, and no other, judged before anything is copied.
      if (t.dtype == DType::kBool) {
        check_bool_view(reinterpret_cast<const unsigned char*>(first), t.shape, t.stride,
                        t.data_pos());
      }
      if (t.contiguous()) {
        f.owner = it->second;  // a part of the storage's buffer, shared
        f.data = first;
      } else {
        check_view_cover(ViewCover(t.shape, t.stride), t.shape);
        views.charge(f.nbytes, "this view");
        f.owner = allocate(f.nbytes);
        f.data = f.owner.get();
        gather_view(first, t.shape, t.stride, elem, f.data);
      }
      out.tensors.push_back(std::move(f));
    } catch (...) {
      rethrow_with_context("key " + quote_text(key) + ": ");
    }
  }
  return out;
}

ForeignContents read_safetensors_tensors(const FileBytes& file) {
  const uint64_t size = file.size();
  if (size < 8) throw FormatError("file too short for a safetensors header");
  unsigned char prefix[8];
  file.read_at(0, 8, prefix);
  const uint64_t header_bytes = safetensors_header_length(prefix, size);
  std::string json(header_bytes, '\0');
  file.read_at(8, header_bytes, json.data());
  const uint64_t data_start = 8 + header_bytes;
  SafetensorsHeader header = parse_safetensors_header(json, size - data_start);
  json = std::string();
  ForeignContents out;
  out.metadata = std::move(header.metadata);
  out.tensors.reserve(header.entries.size());
  // Inside the data section and not overlapping: together at most the file's bytes.
  for (SafetensorsEntry& e : header.entries) {
    ForeignTensor f;
    f.key = std::move(e.key);
    f.dtype = e.dtype;
    f.shape = Shape(e.shape.begin(), e.shape.end());
    f.nbytes = e.end - e.begin;
    if (f.nbytes > 0) {
      f.owner = allocate(f.nbytes);
      f.data = f.owner.get();
      file.read_at(data_start + e.begin, f.nbytes, f.data);
      if (f.dtype == DType::kBool) {
        const ViewCover whole({static_cast<int64_t>(f.nbytes)}, {1});
        const int64_t bad = first_bad_bool(whole, reinterpret_cast<unsigned char*>(f.data));
        if (bad >= 0) {
          throw FormatError("key " + quote_text(f.key) + ": bool tensor holds byte " +
                            std::to_string(static_cast<unsigned char>(f.data[bad])) +
                            " at element " + std::to_string(bad) + " (only 0 and 1 are bools)");
        }
      }
    }
    out.tensors.push_back(std::move(f));
  }
  return out;
}

}  // namespace shardload
