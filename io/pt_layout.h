// Where the tensors of a torch.save file lie in the file, found without reading any of them: the
// zip's central directory and data.pkl say which stored zip member holds each tensor's storage,
// and at which element its view starts, with which shape and strides. No LibTorch.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"
#include "core/shape.h"
#include "io/file_bytes.h"
#include "io/pickle.h"

namespace shardload {

/// One tensor of a torch.save file: a view (shape, strides, storage offset in elements) of the
/// storage held by one zip member.
struct PtTensor {
  std::string key;
  DType dtype = DType::kFloat32;
  Shape shape;
  Shape stride;                ///< in elements, one per dimension
  int64_t storage_offset = 0;  ///< in elements
  std::string record;          ///< the zip member of its storage: "archive/data/3"
  uint64_t record_pos = 0;     ///< file position of the member's first byte
  uint64_t record_bytes = 0;   ///< the member's size

  /// numel(shape) * dtype_size(dtype).
  uint64_t nbytes() const;
  /// File position of the view's first element.
  uint64_t data_pos() const;
  /// True when the view's elements lie back to back in C order: its bytes are then the file's
  /// [data_pos(), data_pos() + nbytes()).
  bool contiguous() const;
};

/// What read_pt_layout found.
struct PtLayout {
  /// The (selected) tensors, in file order.
  std::vector<PtTensor> tensors;
  /// As TensorFileContents: scalar leaves (dotted path, value), what is neither tensor nor
  /// scalar (path, type), tensors outside the selection (container path, count).
  std::vector<std::pair<std::string, std::string>> scalars;
  std::vector<std::pair<std::string, std::string>> skipped;
  std::vector<std::pair<std::string, size_t>> other_tensors;
};

/// Reads the layout of the torch.save zip file in `file`: the central directory is checked
/// first (zip_directory.h), compressed records are refused wherever one is used (data.pkl,
/// byteorder, a storage: torch.save writes none), then data.pkl (a stored member of at most
/// 1 GiB) is read by the
/// restricted unpickler, which loads only tensor rebuilders, typed storages and plain data
/// constructors and never runs code from the file. Every view is checked against its member:
/// dimensions (at most 64), checked products, the last element inside the storage. `select`
/// picks a sub-dictionary as TensorFileOptions::select does (empty: a flat state dict). Throws
/// FormatError naming the key where one is involved (the caller adds the file's name), and
/// UsageError when `select` names nothing in the file.
PtLayout read_pt_layout(const FileBytes& file, const std::string& select);

/// A byte range of a file that holds one whole torch.save archive (a DCP item).
struct ByteWindow {
  uint64_t base = 0;    ///< file position of the archive's first byte
  uint64_t length = 0;  ///< its bytes
};

/// read_pt_layout of the archive that fills `window` of `file`: the zip's offsets count from
/// the window's start, the tensors' positions are file positions. FormatError when the window
/// does not lie inside the file.
PtLayout read_pt_layout(const FileBytes& file, const std::string& select, ByteWindow window);

/// The one tensor that the archive in `window` holds as its root object (torch.save(tensor):
/// each tensor item of a DCP checkpoint), checked as read_pt_layout checks views; its key is
/// empty. FormatError when the root is anything else.
PtTensor read_pt_tensor_archive(const FileBytes& file, ByteWindow window);

/// The root object of the archive in `window` when it holds plain data only (torch.save(obj):
/// each non-tensor item of a DCP checkpoint), unpickled with data_pickle_hooks(): FormatError
/// for a tensor or any global beyond plain data.
PickleValuePtr read_pt_object_archive(const FileBytes& file, ByteWindow window);

/// The data.pkl of the archive in `window`, its zip directory checked as read_pt_layout checks
/// it, not unpickled.
std::string read_pt_archive_pickle(const FileBytes& file, ByteWindow window);

}  // namespace shardload
