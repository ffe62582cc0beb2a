#include "io/tensor_file.h"

#include <ATen/ops/empty.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>
#include <map>
#include <tuple>

#include "core/error.h"
#include "io/chunk_reader.h"
#include "io/key_text.h"
#include "io/pt/pt_reader.h"
#include "io/pt/pt_writer.h"
#include "io/read_budget.h"
#include "io/safetensors/safetensors_reader.h"
#include "io/safetensors/safetensors_writer.h"
#include "io/torch_dtype.h"

namespace shardload {
namespace {

enum class FileKind { kUnknown, kTorch, kSafetensors };

FileKind file_kind(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  if (ext == ".pt" || ext == ".pth" || ext == ".bin") return FileKind::kTorch;
  if (ext == ".safetensors") return FileKind::kSafetensors;
  return FileKind::kUnknown;
}

[[noreturn]] void unknown_kind(const std::string& path) {
  throw FormatError("In " + path +
                    ": unknown tensor file extension (expected .pt, .pth, .bin or .safetensors)");
}

}  // namespace

bool is_tensor_file(const std::string& path) { return file_kind(path) != FileKind::kUnknown; }

std::unique_ptr<ChunkReader> open_tensor_file_reader(const std::string& path,
                                                     const std::string& select) {
  switch (file_kind(path)) {
    case FileKind::kTorch:
      return std::make_unique<PtReader>(path, select);
    case FileKind::kSafetensors:
      if (!select.empty() && select != ".") {
        throw UsageError("In " + path + ": --select " + quote_text(select) +
                         ": a .safetensors file is flat; only .pt checkpoints have "
                         "sub-dictionaries to select");
      }
      return std::make_unique<SafetensorsReader>(path);
    case FileKind::kUnknown:
      break;
  }
  unknown_kind(path);
}

TensorFileContents read_all_tensors(const ChunkReader& reader) {
  const std::vector<ChunkRecord> rows = reader.read_index(0);
  TensorFileContents out;
  out.tensors.reserve(rows.size());
  const uint64_t file_size = reader.file_size();
  ReadBudget budget(checked_add(checked_mul(file_size, uint64_t{2}), kViewFloorBytes),
                    "tensors read whole (twice the file's size + " +
                        std::to_string(kViewFloorBytes) + " bytes; a stride-0 expansion?)");
  // Tied weights (the same bytes, dtype and shape under two keys) stay one tensor.
  std::map<std::tuple<uint64_t, DType, Shape>, at::Tensor> read;
  for (const ChunkRecord& row : rows) {
    try {
      reader.prepare(row);
      const auto options = at::TensorOptions().dtype(scalar_type_of(row.dtype));
      if (row.nbytes == 0) {
        out.tensors.push_back({row.key, at::empty(row.shape, options)});
        continue;
      }
      auto [it, fresh] = read.try_emplace({row.data_offset, row.dtype, row.shape});
      if (fresh) {
        budget.charge(row.nbytes, "this tensor");
        it->second = at::empty(row.shape, options);
        reader.read_chunk(row, it->second.data_ptr(), /*verify=*/true);
      }
      out.tensors.push_back({row.key, it->second});
    } catch (const c10::Error& e) {
      throw FormatError("In " + reader.path() + ": key " + quote_text(row.key) + ": " +
                        e.what_without_backtrace());
    } catch (const FormatError& e) {
      const std::string text = e.what();
      if (text.starts_with("In ")) throw;
      throw FormatError("In " + reader.path() + ": key " + quote_text(row.key) + ": " + text);
    }
  }
  FileExtras extras = reader.extras();
  out.metadata = std::move(extras.metadata);
  out.skipped = std::move(extras.skipped);
  out.other_tensors = std::move(extras.other_tensors);
  return out;
}

TensorList read_tensor_file(const std::string& path) {
  return read_all_tensors(*open_tensor_file_reader(path, "")).tensors;
}

TensorFileContents read_tensor_file(const std::string& path, const TensorFileOptions& options) {
  return read_all_tensors(*open_tensor_file_reader(path, options.select));
}

void write_tensor_file(const std::string& path, const TensorList& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata) {
  switch (file_kind(path)) {
    case FileKind::kTorch:
      return write_torch_file(path, tensors);
    case FileKind::kSafetensors:
      return write_safetensors_file(path, tensors, metadata);
    case FileKind::kUnknown:
      break;
  }
  unknown_kind(path);
}

void check_bool_values(const std::string& key, const at::Tensor& tensor) {
  if (tensor.scalar_type() != at::kBool || tensor.numel() == 0) return;
  const at::Tensor t = tensor.contiguous();
  const auto* bytes = static_cast<const uint8_t*>(t.data_ptr());
  const auto n = static_cast<size_t>(t.numel());
  uint8_t any_high = 0;
  for (size_t i = 0; i < n; ++i) any_high |= bytes[i] & 0xFE;  // branch-free: vectorizes
  if (any_high == 0) return;
  const size_t at =
      static_cast<size_t>(std::find_if(bytes, bytes + n, [](uint8_t b) { return b > 1; }) - bytes);
  throw FormatError("key " + quote_text(key) + ": bool tensor holds byte " +
                    std::to_string(bytes[at]) + " at element " + std::to_string(at) +
                    " (only 0 and 1 are bools)");
}

}  // namespace shardload
