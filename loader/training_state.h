// A training state in C++: modules, torch::optim optimizers and plain values, saved and loaded in
// one collective call with the keys of the Python API (docs/PYTHON.md, "A training state"), so
// that a checkpoint written by one loads in the other:
//
//   model.fc1.weight                        a module's parameters and buffers, under its prefix
//   optim.state.fc1.weight.exp_avg          an optimizer's state by its parameter's name
//   optim.state.fc1.weight.step             the step, a float64 scalar tensor (Python: float32)
//   optim.param_groups                      hyper-parameters and parameter names, a plain value
//   step                                    any plain value
//
// A parameter's name is its name in its module ("fc1.weight") when the state has one module, else
// the module's prefix in front ("model.fc1.weight"). A state tensor of its parameter's shape is
// declared like the parameter (Partition::add_like), so it is split the same way and reshards
// with the model.
#pragma once

#include <mpi.h>

#include <string>
#include <utility>
#include <vector>

#include "core/value.h"
#include "loader/async_save.h"
#include "loader/load.h"
#include "loader/partition.h"
#include "loader/save.h"

namespace torch::optim {
class Optimizer;
class LRScheduler;
}  // namespace torch::optim

namespace shardload {

class TrainingState {
 public:
  /// What add_module() and add_optimizer() recorded.
  struct ModuleEntry {
    std::string prefix;
    torch::nn::Module* module;
    std::vector<SplitRule> rules;
  };
  struct OptimizerEntry {
    std::string prefix;
    torch::optim::Optimizer* optimizer;
  };

  /// The parameters and buffers of `module` under `prefix` ("" for none), each split by the first
  /// rule whose pattern its key (with the prefix) matches, else replicated.
  void add_module(const std::string& prefix, torch::nn::Module& module,
                  std::vector<SplitRule> rules = {});
  /// The state of `optimizer` (torch::optim::SGD, Adam, AdamW or Adagrad; another is a
  /// UsageError at save and load) by the names of its parameters, which must belong to a module
  /// added to this state. On load, state that a fresh optimizer does not have yet is created
  /// first (as its first step would), then loaded over; the param groups' options are set from
  /// the checkpoint, groups matched by their parameters' names.
  void add_optimizer(const std::string& prefix, torch::optim::Optimizer& optimizer);
  /// A plain value: saved from `*value`, and replaced by the checkpoint's on load. `*value`
  /// must outlive the state.
  void add_value(const std::string& key, Value* value);
  /// A LibTorch LR scheduler (StepLR, or any torch::optim::LRScheduler): its step count, as the
  /// int value `<prefix>.last_epoch` (Python's schedulers keep the same count there). Its
  /// optimizer's learning rates are the optimizer's own state (add_optimizer), so a resumed
  /// schedule continues exactly.
  void add_scheduler(const std::string& prefix, torch::optim::LRScheduler& scheduler);

  /// Collective save of everything added (SaveOptions::values gets the plain values).
  SaveResult save(const std::string& path, MPI_Comm comm, SaveOptions options = {});
  /// The same in the background (shardload::save_async): returns once every tensor, optimizer
  /// state included, is copied into host memory and every plain value (a step, a scheduler's
  /// count) taken; training may go on at once.
  SaveHandle save_async(const std::string& path, MPI_Comm comm, SaveOptions options = {});
  /// Collective load of everything added, in place; the verdict covers every key, tensors and
  /// values. Throws as load() does; after a failed verdict nothing has changed (a fresh
  /// optimizer's state created for the load is dropped again).
  LoadResult load(const std::string& path, MPI_Comm comm, LoadOptions options = {});

 private:
  /// The partition of everything added, with the plain values put into `options` (collective).
  Partition prepare_save(const std::string& path, MPI_Comm comm, SaveOptions& options) const;

  std::vector<ModuleEntry> modules_;
  std::vector<OptimizerEntry> optimizers_;
  std::vector<std::pair<std::string, Value*>> values_;
  std::vector<std::pair<std::string, torch::optim::LRScheduler*>> schedulers_;
};

}  // namespace shardload
