#include "io/tensor_file.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include "core/error.h"
#include "io/safetensors.h"
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

void write_tensor_file(const std::string& path, const TensorList& tensors) {
  switch (file_kind(path)) {
    case FileKind::kTorch:
      return write_torch_file(path, tensors);
    case FileKind::kSafetensors:
      return write_safetensors_file(path, tensors);
    case FileKind::kUnknown:
      break;
  }
  unknown_kind(path);
}

}  // namespace shardload
