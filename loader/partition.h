// A rank's partition of a model: the tensors it holds and which part of each global tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "io/tensor_file.h"
#include "sharding/save_plan.h"

namespace torch::nn {
class Module;
}

namespace shardload {

/// One tensor of a partition: the rank's local tensor and how it relates to the global one.
struct PartitionEntry {
  std::string key;
  at::Tensor tensor;        ///< the local part; loads write into it in place
  Declaration declaration;  ///< replicated, an explicit box, or a split across ranks
};

/// "Split tensors whose key matches `pattern` (a search anywhere in the key, like Python's
/// re.search; ECMAScript syntax) along `dim`."
struct SplitRule {
  std::string pattern;
  int64_t dim = 0;
  std::vector<int> group;  ///< ranks sharing the tensor, in order; empty = all ranks
};

/// For each key, the index of the first rule whose pattern matches it (a search, as in
/// Partition::from_tensors), or -1 when none does. For partitions built key by key, where a key
/// follows another's rule (an optimizer's state tensor its parameter's).
std::vector<int> match_rules(const std::vector<SplitRule>& rules,
                             const std::vector<std::string>& keys);

/// The tensors one rank holds. Not collective; save() and load() are.
class Partition {
 public:
  /// A tensor this rank holds whole (replicated: other ranks may hold it too).
  void add(std::string key, at::Tensor tensor);
  /// The box of a global tensor of `global_shape` that starts at `offset`; the local tensor's
  /// shape is the box's shape.
  void add_shard(std::string key, at::Tensor local, Shape global_shape, Shape offset);
  /// A tensor split along `dim` across `group` (all ranks when empty), in group order; each
  /// member holds a consecutive slab, sizes may differ (even zero). The global size and this
  /// rank's offset are worked out collectively in save()/load().
  void add_split(std::string key, at::Tensor local, int64_t dim, std::vector<int> group = {});
  /// A tensor declared like the entry `like` already added (replicated, the same box, or split
  /// the same way), for state that follows a parameter (an optimizer's moments). Its local
  /// shape must be that entry's (UsageError naming both keys).
  void add_like(std::string key, at::Tensor local, const std::string& like);

  /// Parameters and buffers of `module` with PyTorch's key names ("layers.0.fc1.weight"),
  /// each declared by the first matching rule (split along its dim, the module holding the local
  /// slab) or replicated.
  static Partition from_module(const torch::nn::Module& module,
                               const std::vector<SplitRule>& rules = {});
  /// The same for a key → tensor list whose tensors are this rank's local parts.
  static Partition from_tensors(const TensorList& tensors,
                                const std::vector<SplitRule>& rules = {});
  /// From whole (global) tensors: a tensor matching a rule is cut with even_split into `ranks`
  /// parts and this rank keeps (a copy of) part `rank`; the others are kept whole (replicated).
  static Partition from_global(const TensorList& tensors, const std::vector<SplitRule>& rules,
                               int rank, int ranks);

  const std::vector<PartitionEntry>& entries() const { return entries_; }
  std::vector<PartitionEntry>& entries() { return entries_; }
  /// The declarations of all entries, in order (for the collective exchange).
  std::vector<Declaration> declarations() const;
  /// encode_layout(declarations(), rank), without copying the declarations.
  std::string encoded_declarations(int rank) const;

 private:
  std::vector<PartitionEntry> entries_;
};

}  // namespace shardload
