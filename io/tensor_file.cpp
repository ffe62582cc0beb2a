#include "io/tensor_file.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <filesystem>

#include "core/error.h"
#include "io/foreign_tensors.h"
#include "io/key_text.h"
#include "io/safetensors.h"
#include "io/torch_dtype.h"
#include "io/torch_file.h"

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

TensorList read_tensor_file(const std::string& path) {
  switch (file_kind(path)) {
    case FileKind::kTorch:
      return read_torch_file(path);
    case FileKind::kSafetensors:
      return read_safetensors_file(path);
    case FileKind::kUnknown:
      break;
  }
  unknown_kind(path);
}

TensorFileContents read_tensor_file(const std::string& path, const TensorFileOptions& options) {
  switch (file_kind(path)) {
    case FileKind::kTorch:
      return read_torch_contents(path, options.select);
    case FileKind::kSafetensors:
      if (!options.select.empty() && options.select != ".") {
        throw UsageError("In " + path + ": --select " + quote_text(options.select) +
                         ": a .safetensors file is flat; only .pt checkpoints have "
                         "sub-dictionaries to select");
      }
      return read_safetensors_contents(path);
    case FileKind::kUnknown:
      break;
  }
  unknown_kind(path);
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

TensorFileContents as_tensor_contents(ForeignContents contents) {
  TensorFileContents out;
  out.tensors.reserve(contents.tensors.size());
  for (ForeignTensor& f : contents.tensors) {
    const auto options = at::TensorOptions().dtype(scalar_type_of(f.dtype));
    at::Tensor t;
    if (f.nbytes == 0) {
      t = at::empty(f.shape, options);
    } else {
      // The buffer lives as long as the tensor (and any other tensor of its storage).
      t = at::from_blob(
          f.data, f.shape, [owner = std::move(f.owner)](void*) {}, options);
    }
    out.tensors.push_back({std::move(f.key), std::move(t)});
  }
  out.metadata = std::move(contents.metadata);
  out.skipped = std::move(contents.skipped);
  out.other_tensors = std::move(contents.other_tensors);
  return out;
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
