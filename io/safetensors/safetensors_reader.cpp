#include "io/safetensors/safetensors_reader.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "core/error.h"
#include "io/chunk_bytes.h"
#include "io/file_bytes.h"
#include "io/key_text.h"
#include "io/safetensors_header.h"

namespace shardload {

struct SafetensorsReader::Impl {
  FileBytes bytes;
  uint64_t data_start = 0;
  SafetensorsHeader header;
  std::unordered_map<std::string, size_t> entry_of;  ///< key -> header.entries index

  const SafetensorsEntry& entry(const ChunkRecord& row) const {
    auto it = entry_of.find(row.key);
    if (it == entry_of.end()) throw FormatError("the file holds no such tensor");
    const SafetensorsEntry& e = header.entries[it->second];
    const Shape shape(e.shape.begin(), e.shape.end());
    if (row.dtype != e.dtype || row.shape != shape || row.global_shape != shape ||
        row.offset != Shape(shape.size(), 0) || row.data_offset != data_start + e.begin ||
        row.nbytes != e.end - e.begin) {
      throw FormatError("the index row (" + std::string(dtype_name(row.dtype)) + " " +
                        shape_str(row.shape) + " at byte " + std::to_string(row.data_offset) +
                        ") is not the file's tensor (" + std::string(dtype_name(e.dtype)) + " " +
                        shape_str(shape) + " at byte " + std::to_string(data_start + e.begin) +
                        "): did the file change while it was read?");
    }
    return e;
  }

  ChunkBytes chunk_bytes(const ChunkRecord& row) const {
    entry(row);
    ChunkBytes c;
    c.file = &bytes;
    c.pos = row.data_offset;
    c.nbytes = row.nbytes;
    c.elem_size = dtype_size(row.dtype);
    c.is_bool = row.dtype == DType::kBool;
    return c;
  }
};

SafetensorsReader::SafetensorsReader(const std::string& path)
    : SafetensorsReader(
          [&] {
            try {
              return FileBytes::open(path);
            } catch (...) {
              rethrow_with_context("In " + path + ": ");
            }
          }(),
          path) {}

SafetensorsReader::SafetensorsReader(FileBytes bytes, const std::string& name)
    : impl_(std::make_unique<Impl>()), path_(name) {
  try {
    impl_->bytes = std::move(bytes);
    const uint64_t size = impl_->bytes.size();
    if (size < 8) throw FormatError("file too short for a safetensors header");
    unsigned char prefix[8];
    impl_->bytes.read_at(0, 8, prefix);
    const uint64_t header_bytes = safetensors_header_length(prefix, size);
    std::string json(header_bytes, '\0');
    impl_->bytes.read_at(8, header_bytes, json.data());
    impl_->data_start = 8 + header_bytes;
    impl_->header = parse_safetensors_header(json, size - impl_->data_start);
    impl_->entry_of.reserve(impl_->header.entries.size());
    for (size_t i = 0; i < impl_->header.entries.size(); ++i) {
      impl_->entry_of.emplace(impl_->header.entries[i].key, i);
    }
  } catch (...) {
    rethrow_with_context("In " + name + ": ");
  }
}

SafetensorsReader::~SafetensorsReader() = default;
SafetensorsReader::SafetensorsReader(SafetensorsReader&&) noexcept = default;
SafetensorsReader& SafetensorsReader::operator=(SafetensorsReader&&) noexcept = default;

std::vector<ChunkRecord> SafetensorsReader::read_index(int32_t file_number) const {
  std::vector<ChunkRecord> rows;
  rows.reserve(impl_->header.entries.size());
  int64_t position = 0;
  for (const SafetensorsEntry& e : impl_->header.entries) {
    ChunkRecord row;
    row.key = e.key;
    row.dtype = e.dtype;
    row.global_shape = Shape(e.shape.begin(), e.shape.end());
    row.offset = Shape(row.global_shape.size(), 0);
    row.shape = row.global_shape;
    row.file = file_number;
    row.data_offset = impl_->data_start + e.begin;
    row.nbytes = e.end - e.begin;
    row.order = (int64_t{file_number} << 32) + position++;
    rows.push_back(std::move(row));
  }
  return rows;
}

void SafetensorsReader::prepare(const ChunkRecord& row) const {
  try {
    impl_->entry(row);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key " + quote_text(row.key) + ": ");
  }
}

void SafetensorsReader::read(const ChunkRecord& row, const Shape& offset_in_chunk,
                             const Shape& shape, void* dst, bool /*verify*/) const {
  try {
    read_box(impl_->chunk_bytes(row), row.shape, offset_in_chunk, shape, dst, /*verify=*/false);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key " + quote_text(row.key) + ": ");
  }
}

void SafetensorsReader::read_chunk(const ChunkRecord& row, void* dst, bool verify) const {
  read(row, Shape(row.shape.size(), 0), row.shape, dst, verify);
}

void SafetensorsReader::read_chunks(std::span<const ChunkRecord* const> rows, void* dst,
                                    bool /*verify*/) const {
  for (const ChunkRecord* row : rows) prepare(*row);
  try {
    std::vector<uint64_t> pos(rows.size());
    for (size_t k = 0; k < rows.size(); ++k) pos[k] = rows[k]->data_offset;
    read_byte_ranges(impl_->bytes, rows, pos, dst, [&](size_t k, char* bytes) {
      try {
        finish_in_place(impl_->chunk_bytes(*rows[k]), bytes, /*verify=*/false);  // bool values
      } catch (...) {
        rethrow_with_context("reading key " + quote_text(rows[k]->key) + ": ");
      }
    });
  } catch (...) {
    rethrow_with_context("In " + path_ + ": ");
  }
}

void SafetensorsReader::verify_chunk(const ChunkRecord& row) const {
  try {
    const ChunkBytes c = impl_->chunk_bytes(row);
    if (c.nbytes == 0) return;
    if (!c.is_bool) {
      // No checksum to compare: the tensor's bytes lie inside the file (the header said so; the
      // file may have shrunk since).
      char last;
      c.file->read_at(c.pos + c.nbytes - 1, 1, &last);
      return;
    }
    std::vector<unsigned char> window(std::min<uint64_t>(c.nbytes, kReadWindowBytes));
    for (uint64_t p = 0; p < c.nbytes; p += window.size()) {
      const uint64_t n = std::min<uint64_t>(window.size(), c.nbytes - p);
      c.file->read_at(c.pos + p, n, window.data());
      for (uint64_t i = 0; i < n; ++i) {
        if (window[i] > 1) {
          throw FormatError("bool element " + std::to_string(p + i) + " holds byte value " +
                            std::to_string(window[i]) + " (a bool is 0 or 1)");
        }
      }
    }
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key " + quote_text(row.key) + ": ");
  }
}

const std::vector<std::pair<std::string, std::string>>& SafetensorsReader::metadata() const {
  return impl_->header.metadata;
}

bool SafetensorsReader::enable_direct_io() { return impl_->bytes.enable_direct_io(); }

uint64_t SafetensorsReader::file_size() const { return impl_->bytes.size(); }

FileExtras SafetensorsReader::extras() const { return {impl_->header.metadata, {}, {}}; }

}  // namespace shardload
