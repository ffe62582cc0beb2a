// Picking the tensors out of an unpickled checkpoint: a flat state dict, or one sub-dictionary
// of a nested training checkpoint ({"model": ..., "optimizer": ..., "epoch": 3}, Lightning's
// {"state_dict": ...}). Works on pickle values, without LibTorch: a tensor is a kObject whose
// type_name is kPickleTensorType. Every walk is iterative and visits each container once.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "io/pickle.h"

namespace shardload {

/// The type_name of the kObject values that are tensors.
inline constexpr std::string_view kPickleTensorType = "tensor";

/// What select_tensors found.
struct PickleSelection {
  /// The selected sub-dictionary's tensors in file order. Dicts, lists and tuples nested inside
  /// it add their keys (or indices) joined by '.', as PyTorch names nested modules:
  /// {"state": {0: {"exp_avg": T}}} gives "state.0.exp_avg".
  std::vector<std::pair<std::string, PickleValuePtr>> tensors;
  /// Plain scalar leaves anywhere in the file (int, float, str, bool; a list or tuple of at most
  /// 1024 numbers or bools as one "[0.9, 0.999]"), by dotted path from the top level, as Python
  /// prints them: metadata candidates.
  std::vector<std::pair<std::string, std::string>> scalars;
  /// Every other leaf that is neither a tensor nor a plain scalar: dotted path and type (None,
  /// bytes, a numpy dtype, a container met a second time, ...). Nothing is ever called.
  std::vector<std::pair<std::string, std::string>> skipped;
  /// Tensors outside the selection: path of the container holding them, and how many.
  std::vector<std::pair<std::string, size_t>> other_tensors;
};

/// Selects the sub-dictionary `select` of the checkpoint `root`: dict keys from the top level
/// joined by '.', like "model", "state_dict" or "optimizer.state"; an int key is written in
/// decimal. Keys may contain dots themselves: at each level the longest run of segments that
/// is a key wins ("module.encoder" is the key "module.encoder" if there is one, else
/// ckpt["module"]["encoder"]). "." selects the top level itself. Throws FormatError naming the
/// path when it does not lead to a dict (or list), when two flattened keys collide, or when a
/// key is not valid UTF-8 or contains NUL.
PickleSelection select_tensors(const PickleValuePtr& root, std::string_view select);

/// The tensors of a flat state dict (a dict of str -> tensor), in file order. Anything else is a
/// FormatError naming the offending key; when the file is a nested checkpoint the message lists
/// the sub-dictionaries holding tensors and suggests --select.
std::vector<std::pair<std::string, PickleValuePtr>> flat_state_dict(const PickleValuePtr& root);

}  // namespace shardload
