#include "loader/partition.h"

#include <torch/nn/module.h>

#include <algorithm>
#include <regex>

#include "core/error.h"
#include "core/wire.h"
#include "loader/tensor_bytes.h"
#include "sharding/box.h"
#include "sharding/declared_layouts.h"

namespace shardload {
namespace {

struct CompiledRule {
  std::regex re;
  const SplitRule* rule;
};

std::vector<CompiledRule> compile(const std::vector<SplitRule>& rules) {
  std::vector<CompiledRule> out;
  for (const auto& r : rules) {
    try {
      out.push_back({std::regex(r.pattern, std::regex::ECMAScript), &r});
    } catch (const std::regex_error& e) {
      throw UsageError("split rule '" + r.pattern + "': invalid regular expression: " + e.what());
    }
  }
  return out;
}

const SplitRule* match(const std::vector<CompiledRule>& rules, const std::string& key) {
  for (const auto& r : rules) {
    if (std::regex_search(key, r.re)) return r.rule;
  }
  return nullptr;
}

/// A tensor that has no bytes of its own to store or to load into is refused here, where the
/// partition is made (phase 'prepare' of the Python API, before anything is written), with one
/// line naming the key and the reason, rather than in phase 'write' with LibTorch's stack trace.
void check_storable(const std::string& key, const at::Tensor& t) {
  if (!t.defined()) throw UsageError("key '" + key + "': an undefined tensor has no data");
  if (t.is_nested()) {
    throw UsageError("key '" + key +
                     "': a nested tensor has no single shape to store (store its components, "
                     "e.g. t.unbind())");
  }
  if (t.key_set().has(c10::DispatchKey::Python)) {
    throw UsageError("key '" + key +
                     "': a tensor subclass (a DTensor, ...) holds no data of its own here; pass "
                     "its local tensor (shardload.save/load in Python declare DTensors from their "
                     "placements)");
  }
  if (t.layout() != at::kStrided) {
    throw UsageError("key '" + key + "': a sparse tensor (" + c10::str(t.layout()) +
                     ") has no dense bytes to store (store its parts, e.g. indices() and "
                     "values(); Python's shardload.save does that itself)");
  }
  if (t.is_meta()) {
    throw UsageError("key '" + key +
                     "': a meta tensor has no data (materialise it first, e.g. "
                     "module.to_empty(device=...))");
  }
}

Declaration base_declaration(const std::string& key, const at::Tensor& t) {
  check_storable(key, t);
  Declaration d;
  d.key = key;
  d.dtype = dtype_of(t, key);
  d.local_shape = shape_of(t);
  return d;
}

}  // namespace

void Partition::add(std::string key, at::Tensor tensor) {
  Declaration d = base_declaration(key, tensor);
  d.kind = Declaration::Kind::kReplicated;
  d.global_shape = d.local_shape;
  d.offset.assign(d.local_shape.size(), 0);
  entries_.push_back({std::move(key), std::move(tensor), std::move(d)});
}

void Partition::add_shard(std::string key, at::Tensor local, Shape global_shape, Shape offset) {
  Declaration d = base_declaration(key, local);
  d.kind = Declaration::Kind::kShard;
  d.global_shape = std::move(global_shape);
  d.offset = std::move(offset);
  entries_.push_back({std::move(key), std::move(local), std::move(d)});
}

void Partition::add_like(std::string key, at::Tensor local, const std::string& like) {
  auto it = std::find_if(entries_.begin(), entries_.end(),
                         [&](const PartitionEntry& e) { return e.key == like; });
  if (it == entries_.end()) {
    throw UsageError("key '" + key + "': declared like '" + like +
                     "', which is not in the partition");
  }
  Declaration d = base_declaration(key, local);
  if (d.local_shape != it->declaration.local_shape) {
    throw UsageError("key '" + key + "': shape " + shape_str(d.local_shape) +
                     " is not the shape of '" + like + "' (" +
                     shape_str(it->declaration.local_shape) + "), which it is declared like");
  }
  const DType dtype = d.dtype;
  d = it->declaration;
  d.key = key;
  d.dtype = dtype;
  entries_.push_back({std::move(key), std::move(local), std::move(d)});
}

void Partition::add_split(std::string key, at::Tensor local, int64_t dim, std::vector<int> group) {
  Declaration d = base_declaration(key, local);
  d.kind = Declaration::Kind::kSplit;
  d.split_dim = dim;
  d.group = std::move(group);
  entries_.push_back({std::move(key), std::move(local), std::move(d)});
}

std::vector<int> match_rules(const std::vector<SplitRule>& rules,
                             const std::vector<std::string>& keys) {
  auto compiled = compile(rules);
  std::vector<int> out;
  out.reserve(keys.size());
  for (const auto& key : keys) {
    const SplitRule* rule = match(compiled, key);
    out.push_back(rule ? static_cast<int>(rule - rules.data()) : -1);
  }
  return out;
}

Partition Partition::from_tensors(const TensorList& tensors, const std::vector<SplitRule>& rules) {
  auto compiled = compile(rules);
  Partition p;
  for (const auto& [key, tensor] : tensors) {
    if (const SplitRule* rule = match(compiled, key)) {
      p.add_split(key, tensor, rule->dim, rule->group);
    } else {
      p.add(key, tensor);
    }
  }
  return p;
}

Partition Partition::from_module(const torch::nn::Module& module,
                                 const std::vector<SplitRule>& rules) {
  TensorList tensors;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    tensors.push_back({item.key(), item.value()});
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    tensors.push_back({item.key(), item.value()});
  }
  return from_tensors(tensors, rules);
}

Partition Partition::from_global(const TensorList& tensors, const std::vector<SplitRule>& rules,
                                 int rank, int ranks) {
  auto compiled = compile(rules);
  Partition p;
  for (const auto& [key, tensor] : tensors) {
    const SplitRule* rule = match(compiled, key);
    if (!rule) {
      p.add(key, tensor);
      continue;
    }
    Shape global = shape_of(tensor);
    int64_t dim = rule->dim < 0 ? rule->dim + static_cast<int64_t>(global.size()) : rule->dim;
    if (dim < 0 || dim >= static_cast<int64_t>(global.size())) {
      throw UsageError("key '" + key + "': split dimension " + std::to_string(rule->dim) +
                       " is out of range for shape " + shape_str(global) + " (rule '" +
                       rule->pattern + "')");
    }
    Box part = even_split(global, dim, ranks, rank);
    at::Tensor local = tensor.narrow(dim, part.offset[dim], part.shape[dim]).clone();
    p.add_shard(key, local, global, part.offset);
  }
  return p;
}

std::vector<Declaration> Partition::declarations() const {
  std::vector<Declaration> out;
  out.reserve(entries_.size());
  for (const auto& e : entries_) out.push_back(e.declaration);
  return out;
}

std::string Partition::encoded_declarations(int rank) const {
  WireWriter out;
  out.u64(entries_.size());  // as encode_layout
  for (const auto& e : entries_) encode_declaration(out, e.declaration, rank);
  return out.take();
}

}  // namespace shardload
