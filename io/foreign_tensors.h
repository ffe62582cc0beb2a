// The whole-file readers of the foreign formats, without LibTorch: every tensor of a torch.save
// file or a .safetensors file read into memory, contiguous, in C order, little-endian, within
// one memory budget (io/read_budget.h) and with every value check made on the stored bytes each
// tensor covers. io/torch_file.cpp and io/safetensors.cpp wrap the buffers as at::Tensors.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/shape.h"
#include "io/file_bytes.h"

namespace shardload {

/// One tensor read into memory: `nbytes` bytes at `data`, kept alive by `owner` (shared by
/// tensors of one storage: tied weights stay one buffer). `data` is null for no elements.
struct ForeignTensor {
  std::string key;
  DType dtype = DType::kFloat32;
  Shape shape;
  std::shared_ptr<char[]> owner;
  char* data = nullptr;
  uint64_t nbytes = 0;
};

/// Everything a whole-file read found (as TensorFileContents, tensor_file.h).
struct ForeignContents {
  std::vector<ForeignTensor> tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
  std::vector<std::pair<std::string, std::string>> skipped;
  std::vector<std::pair<std::string, size_t>> other_tensors;
};

/// Reads the (selected) tensors of the torch.save file in `file`: its layout first
/// (read_pt_layout: the zip directory, compressed records refused, data.pkl by the bounded
/// unpickler), then each storage a tensor uses is read once, whole (at most the file's bytes in
/// all). A tensor that lies back to back in its storage is that part of the storage's buffer;
/// any other view is copied contiguous, after its covered stored bytes were checked, and all
/// such copies together may take the file's size plus kViewFloorBytes; a view whose elements
/// overlap in a pattern that checking would take more than 4 visits per stored element is
/// refused. Bool bytes other than 0 and 1 are refused where a tensor covers them, and only there.
/// Throws FormatError naming the key (the caller adds the file), UsageError when `select`
/// names no dict of the file.
ForeignContents read_pt_tensors(const FileBytes& file, const std::string& select);

/// Reads every tensor of the .safetensors file in `file` (the header by the bounded SAX parser
/// of safetensors_header.h; the tensors together hold at most the file's bytes) and its
/// `__metadata__`. Throws FormatError naming the key (the caller adds the file).
ForeignContents read_safetensors_tensors(const FileBytes& file);

/// Throws FormatError "bool element I of the stored bytes the view covers (byte B of the file)
/// holds byte value V" when a byte that the view (`shape`, `stride` in elements, its first
/// element at `bytes[0]`, at file position `file_pos`) covers is neither 0 nor 1; no other byte
/// is judged. The caller adds the key. Views overlapping too much are refused
/// (check_view_cover).
void check_bool_view(const unsigned char* bytes, const Shape& shape, const Shape& stride,
                     uint64_t file_pos);

/// The most elements a check of a view may visit per element of the storage it spans (views
/// overlapping beyond what ViewCover folds), past a floor of 2^16 elements.
inline constexpr int64_t kMaxViewVisitsPerElement = 4;

class ViewCover;
/// Returns `cover`; throws FormatError when visiting its runs would take more than
/// kMaxViewVisitsPerElement visits per element it spans (a view of `shape` crafted to overlap).
const ViewCover& check_view_cover(const ViewCover& cover, const Shape& shape);

}  // namespace shardload
