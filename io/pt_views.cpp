#include "io/pt_views.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "io/chunk_bytes.h"
#include "io/key_text.h"
#include "io/view_cover.h"

namespace shardload {

namespace {

/// A contiguous view's bytes as a byte range of the file: what checks them (bool values).
ChunkBytes view_bytes(const FileBytes& file, const PtTensor& t) {
  ChunkBytes c;
  c.file = &file;
  c.pos = t.data_pos();
  c.nbytes = t.nbytes();
  c.elem_size = dtype_size(t.dtype);
  c.is_bool = t.dtype == DType::kBool;
  return c;
}

}  // namespace

void read_pt_views(const FileBytes& file, std::span<const ChunkRecord* const> rows,
                   const std::function<const PtTensor&(const ChunkRecord&)>& view, void* dst) {
  char* out = static_cast<char*>(dst);
  size_t i = 0;
  while (i < rows.size()) {
    // A run of contiguous views: byte ranges, read together where they lie side by side.
    size_t j = i;
    std::vector<uint64_t> pos;
    while (j < rows.size() && view(*rows[j]).contiguous())
      pos.push_back(view(*rows[j++]).data_pos());
    const auto run = rows.subspan(i, j - i);
    read_byte_ranges(file, run, pos, out, [&](size_t k, char* bytes) {
      try {
        finish_in_place(view_bytes(file, view(*run[k])), bytes, /*verify=*/false);  // bools
      } catch (...) {
        rethrow_with_context("reading key " + quote_text(run[k]->key) + ": ");
      }
    });
    for (const ChunkRecord* row : run) out += row->nbytes;
    if (j < rows.size()) {  // a view that is not: gathered
      const PtTensor& t = view(*rows[j]);
      try {
        read_pt_box(file, t, Shape(t.shape.size(), 0), t.shape, out);
      } catch (...) {
        rethrow_with_context("reading key " + quote_text(rows[j]->key) + ": ");
      }
      out += rows[j++]->nbytes;
    }
    i = j;
  }
}

void read_pt_box(const FileBytes& file, const PtTensor& t, const Shape& offset, const Shape& shape,
                 void* dst) {
  if (t.contiguous() && offset.size() == t.shape.size()) {
    read_box(view_bytes(file, t), t.shape, offset, shape, dst, /*verify=*/false);
    return;
  }
  if (numel(shape) == 0) return;
  const int64_t elsize = dtype_size(t.dtype);
  int64_t first = t.storage_offset;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (offset.size() != shape.size() || shape.size() != t.shape.size() || offset[d] < 0 ||
        shape[d] < 0 || offset[d] > t.shape[d] - shape[d]) {
      throw UsageError("box at " + shape_str(offset) + " of shape " + shape_str(shape) +
                       " does not lie inside the tensor of shape " + shape_str(t.shape));
    }
    first += offset[d] * t.stride[d];
  }
  // Inside the storage: the layout checked the view's last element. A contiguous view's box is
  // gathered like any other (its runs are rows of the box).
  const ViewCover cover(shape, t.stride);
  std::vector<char> buffer(static_cast<size_t>(cover.span() * elsize));
  const uint64_t pos = t.record_pos + static_cast<uint64_t>(first * elsize);
  file.read_at(pos, buffer.size(), buffer.data());
  if (t.dtype == DType::kBool) {
    check_bool_view(reinterpret_cast<const unsigned char*>(buffer.data()), shape, t.stride, pos);
  }
  gather_view(buffer.data(), shape, t.stride, elsize, static_cast<char*>(dst));
}

uint64_t pt_stored_bytes(const PtTensor& t) {
  return static_cast<uint64_t>(ViewCover(t.shape, t.stride).span()) *
         static_cast<uint64_t>(dtype_size(t.dtype));
}

void verify_pt_tensor(const FileBytes& file, const PtTensor& t) {
  if (t.nbytes() == 0) return;
  const ViewCover cover(t.shape, t.stride);
  const uint64_t span = pt_stored_bytes(t);
  if (t.dtype != DType::kBool) {
    char last;  // the bytes lie inside the file (it may have shrunk since it was opened)
    file.read_at(t.data_pos() + span - 1, 1, &last);
    return;
  }
  // Exactly the stored bytes the view covers (a view may skip some, and a stride-0 expansion
  // covers few), through a bounded window over its span.
  check_view_cover(cover, t.shape);
  std::vector<unsigned char> window(std::min<uint64_t>(span, kReadWindowBytes));
  uint64_t lo = 0, hi = 0;  // the span's bytes [lo, hi) are in the window
  cover.for_each_run([&](int64_t first, int64_t count) {
    auto at = static_cast<uint64_t>(first);
    const uint64_t end = at + static_cast<uint64_t>(count);
    while (at < end) {
      if (at < lo || at >= hi) {
        lo = at;
        hi = std::min<uint64_t>(span, lo + window.size());
        file.read_at(t.data_pos() + lo, hi - lo, window.data());
      }
      const uint64_t stop = std::min(end, hi);
      for (uint64_t k = at; k < stop; ++k) {
        if (window[k - lo] > 1) {
          throw FormatError("bool element " + std::to_string(k) +
                            " of the stored bytes the view covers (byte " +
                            std::to_string(t.data_pos() + k) + " of the file) holds byte value " +
                            std::to_string(window[k - lo]) + " (a bool is 0 or 1)");
        }
      }
      at = stop;
    }
  });
}

}  // namespace shardload
