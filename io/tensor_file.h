// Whole-file reads and writes of the single-file formats (torch.save files and .safetensors), as
// convert, diff and a model file given to `load --into` use them: a thin layer over each format's
// ChunkReader (io/chunk_reader.h), which checks every byte it hands out, and its writer.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace shardload {

class ChunkReader;

/// A tensor with its state-dict key.
struct NamedTensor {
  std::string key;
  at::Tensor tensor;
};

/// A state dict in file order.
using TensorList = std::vector<NamedTensor>;

/// How read_tensor_file picks the tensors of a file.
struct TensorFileOptions {
  /// Empty: the file must be a flat state dict. Otherwise the sub-dictionary of a nested
  /// training checkpoint (.pt) to take the tensors from: dict keys from the top level joined by
  /// '.', as in "model", "state_dict", "optimizer.state" (ckpt["optimizer"]["state"]); an int
  /// key is written in decimal; a key that contains dots itself is matched whole (the longest
  /// run of segments that is a key wins). "." takes the top level itself. Tensors in dicts
  /// nested inside the selection get their keys joined with '.' ("state.0.exp_avg").
  std::string select;
};

/// Everything read_tensor_file found in a file.
struct TensorFileContents {
  /// The (selected) tensors, contiguous, on the CPU, in file order.
  TensorList tensors;
  /// Metadata candidates: a .pt file's plain scalar leaves (int, float, str, bool, and lists
  /// of numbers) anywhere in the file, by dotted path ("epoch", "optimizer.param_groups.0.lr"),
  /// as Python prints them; a .safetensors file's `__metadata__`.
  std::vector<std::pair<std::string, std::string>> metadata;
  /// What is neither a tensor nor a plain scalar (None, bytes, ...): dotted path and type.
  /// Reported only; nothing in a file is ever called.
  std::vector<std::pair<std::string, std::string>> skipped;
  /// Tensors outside the selection: path of the container holding them, and how many.
  std::vector<std::pair<std::string, size_t>> other_tensors;
};

/// True when `path` names a file format read_tensor_file understands (.pt, .pth, .bin,
/// .safetensors).
bool is_tensor_file(const std::string& path);

/// Reads a state dict from a `.pt`/`.pth`/`.bin` file written by torch.save (zip format) or a
/// `.safetensors` file, choosing by extension. Tensors come back as contiguous CPU tensors.
/// The file is opened without blocking and must be a regular file. Every size in the file is
/// checked before anything is allocated from it, within one memory budget (io/read_budget.h);
/// bool tensors must hold only 0 and 1 in the stored bytes they cover; keys must be valid UTF-8
/// without NUL. Throws FormatError naming the file
/// (and the key, where one is involved); a nested checkpoint's error lists the sub-dictionaries
/// that hold tensors, to pick one with `options.select`.
TensorList read_tensor_file(const std::string& path);

/// read_tensor_file with options: the tensors of `options.select`, the metadata candidates and
/// what was skipped. A `select` other than "." on a .safetensors file (always flat) is a
/// UsageError; a `select` that names no dict of the file is a UsageError too.
TensorFileContents read_tensor_file(const std::string& path, const TensorFileOptions& options);

/// Writes a state dict as `.pt` (loadable by Python's torch.load, weights_only too) or
/// `.safetensors`, by extension, atomically (AtomicFile). Non-contiguous tensors are written
/// contiguous. `metadata` goes into a .safetensors file's `__metadata__`; a .pt file has no
/// place for it and ignores it.
void write_tensor_file(const std::string& path, const TensorList& tensors,
                       const std::vector<std::pair<std::string, std::string>>& metadata = {});

/// The reader of the single-file format `path` names by its extension: a PtReader (taking the
/// sub-dictionary `select`, empty for a flat state dict) or a SafetensorsReader. Throws
/// FormatError naming the path (an unknown extension too), UsageError for a `select` other than
/// "" or "." on a .safetensors file.
std::unique_ptr<ChunkReader> open_tensor_file_reader(const std::string& path,
                                                     const std::string& select);

/// Every row of `reader` read whole into a CPU tensor of its dtype and shape, in index order,
/// each byte checked as the reader checks it (bool values), with the reader's extras. Rows with
/// the same bytes, dtype and shape (tied weights) share one tensor. The tensors together may
/// take at most twice the file's size plus kViewFloorBytes (io/read_budget.h): a file whose views
/// expand beyond that (stride 0, overlapping slices) is refused before anything is allocated.
/// Throws FormatError naming the file and the key.
TensorFileContents read_all_tensors(const ChunkReader& reader);

/// Throws FormatError "key 'K': ..." when bool tensor `tensor` holds a byte other than 0 or 1
/// (PyTorch would read such a byte as a bool that is neither true nor false).
void check_bool_values(const std::string& key, const at::Tensor& tensor);

}  // namespace shardload
