#include "io/pt/pt_reader.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <unordered_map>

#include "core/error.h"
#include "io/chunk_bytes.h"
#include "io/file_bytes.h"
#include "io/key_text.h"
#include "io/pt_layout.h"
#include "io/pt_views.h"

namespace shardload {
namespace {

/// Lines of a note list shown before "... and N more".
constexpr size_t kShown = 20;

/// `text` on one line: control characters (a str leaf may hold newlines) become spaces.
std::string one_line(std::string text) {
  for (char& c : text) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  return text;
}

template <class Items, class Text>
std::string listed(const Items& items, Text text) {
  std::string out;
  for (size_t i = 0; i < items.size() && i < kShown; ++i) {
    out += (i ? ", " : "") + one_line(text(items[i]));
  }
  if (items.size() > kShown) out += ", ... and " + std::to_string(items.size() - kShown) + " more";
  return out;
}

}  // namespace

struct PtReader::Impl {
  FileBytes bytes;
  std::string select;
  PtLayout layout;
  std::unordered_map<std::string, size_t> tensor_of;  ///< key -> layout.tensors index

  const PtTensor& tensor(const ChunkRecord& row) const {
    auto it = tensor_of.find(row.key);
    if (it == tensor_of.end()) throw FormatError("the file holds no such tensor");
    const PtTensor& t = layout.tensors[it->second];
    if (row.dtype != t.dtype || row.shape != t.shape || row.global_shape != t.shape ||
        row.offset != Shape(t.shape.size(), 0) || row.data_offset != t.data_pos() ||
        row.nbytes != t.nbytes()) {
      throw FormatError("the index row (" + std::string(dtype_name(row.dtype)) + " " +
                        shape_str(row.shape) + " at byte " + std::to_string(row.data_offset) +
                        ") is not the file's tensor (" + std::string(dtype_name(t.dtype)) + " " +
                        shape_str(t.shape) + " at byte " + std::to_string(t.data_pos()) +
                        "): did the file change while it was read?");
    }
    return t;
  }
};

PtReader::PtReader(const std::string& path, const std::string& select)
    : PtReader(
          [&] {
            try {
              return FileBytes::open(path);
            } catch (...) {
              rethrow_with_context("In " + path + ": ");
            }
          }(),
          path, select) {}

PtReader::PtReader(FileBytes bytes, const std::string& name, const std::string& select)
    : impl_(std::make_unique<Impl>()), path_(name) {
  try {
    impl_->bytes = std::move(bytes);
    impl_->select = select;
    impl_->layout = read_pt_layout(impl_->bytes, select);
    impl_->tensor_of.reserve(impl_->layout.tensors.size());
    for (size_t i = 0; i < impl_->layout.tensors.size(); ++i) {
      if (!impl_->tensor_of.emplace(impl_->layout.tensors[i].key, i).second) {
        throw FormatError("key " + quote_text(impl_->layout.tensors[i].key) + ": occurs twice");
      }
    }
  } catch (...) {
    rethrow_with_context("In " + name + ": ");
  }
}

PtReader::~PtReader() = default;

PtReader::PtReader(PtReader&&) noexcept = default;
PtReader& PtReader::operator=(PtReader&&) noexcept = default;

std::vector<ChunkRecord> PtReader::read_index(int32_t file_number) const {
  std::vector<ChunkRecord> rows;
  rows.reserve(impl_->layout.tensors.size());
  int64_t position = 0;
  for (const PtTensor& t : impl_->layout.tensors) {
    ChunkRecord row;
    row.key = t.key;
    row.dtype = t.dtype;
    row.global_shape = t.shape;
    row.offset = Shape(t.shape.size(), 0);
    row.shape = t.shape;
    row.file = file_number;
    row.dataset = t.record;
    row.data_offset = t.data_pos();
    row.nbytes = t.nbytes();
    row.order = (int64_t{file_number} << 32) + position++;
    rows.push_back(std::move(row));
  }
  return rows;
}

void PtReader::prepare(const ChunkRecord& row) const {
  try {
    impl_->tensor(row);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key " + quote_text(row.key) + ": ");
  }
}

void PtReader::read(const ChunkRecord& row, const Shape& offset_in_chunk, const Shape& shape,
                    void* dst, bool /*verify*/) const {
  try {
    read_pt_box(impl_->bytes, impl_->tensor(row), offset_in_chunk, shape, dst);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key " + quote_text(row.key) + ": ");
  }
}

void PtReader::read_chunk(const ChunkRecord& row, void* dst, bool verify) const {
  read(row, Shape(row.shape.size(), 0), row.shape, dst, verify);
}

void PtReader::read_chunks(std::span<const ChunkRecord* const> rows, void* dst,
                           bool /*verify*/) const {
  for (const ChunkRecord* row : rows) prepare(*row);
  try {
    read_pt_views(
        impl_->bytes, rows,
        [this](const ChunkRecord& row) -> const PtTensor& { return impl_->tensor(row); }, dst);
  } catch (...) {
    rethrow_with_context("In " + path_ + ": ");
  }
}

void PtReader::verify_chunk(const ChunkRecord& row) const {
  try {
    verify_pt_tensor(impl_->bytes, impl_->tensor(row));
  } catch (...) {
    rethrow_with_context("In " + path_ + ": reading key " + quote_text(row.key) + ": ");
  }
}

uint64_t PtReader::stored_bytes(const ChunkRecord& row) const {
  return pt_stored_bytes(impl_->tensor(row));
}

std::vector<std::string> PtReader::notes() const {
  const PtLayout& l = impl_->layout;
  std::vector<std::string> out;
  if (impl_->select.empty()) return out;
  const std::string in = "In " + path_ + ": ";
  out.push_back(in + "selected " + quote_text(impl_->select) + ": " +
                std::to_string(l.tensors.size()) + " tensor(s)");
  if (!l.scalars.empty()) {
    out.push_back(in + "scalar leaves, not loaded: " + listed(l.scalars, [](const auto& s) {
                    return s.first + " = " + s.second;
                  }));
  }
  if (!l.skipped.empty()) {
    out.push_back(in + "neither tensor nor scalar, not loaded (nothing in a file is run): " +
                  listed(l.skipped, [](const auto& s) { return s.first + " (" + s.second + ")"; }));
  }
  if (!l.other_tensors.empty()) {
    out.push_back(in + "not selected: " + listed(l.other_tensors, [](const auto& s) {
                    return std::to_string(s.second) + " tensor(s) in " +
                           quote_text(s.first.empty() ? "." : s.first);
                  }));
  }
  return out;
}

FileExtras PtReader::extras() const {
  const PtLayout& l = impl_->layout;
  return {l.scalars, l.skipped, l.other_tensors};
}

uint64_t PtReader::file_size() const { return impl_->bytes.size(); }

bool PtReader::enable_direct_io() { return impl_->bytes.enable_direct_io(); }

}  // namespace shardload
