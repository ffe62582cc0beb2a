#include "loader/training_state.h"

#include <torch/nn/module.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/schedulers/lr_scheduler.h>
#include <torch/optim/sgd.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "core/error.h"
#include "loader/collective.h"
#include "loader/tensor_bytes.h"

namespace shardload {
namespace {

namespace optim = torch::optim;

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

/// Which of the optimizers we know `o` is.
enum class Kind { kSgd, kAdam, kAdamW, kAdagrad };

Kind kind_of(optim::Optimizer& o, const std::string& prefix) {
  if (dynamic_cast<optim::SGD*>(&o)) return Kind::kSgd;
  if (dynamic_cast<optim::AdamW*>(&o)) return Kind::kAdamW;
  if (dynamic_cast<optim::Adam*>(&o)) return Kind::kAdam;
  if (dynamic_cast<optim::Adagrad*>(&o)) return Kind::kAdagrad;
  throw UsageError("optimizer '" + prefix +
                   "': only torch::optim::SGD, Adam, AdamW and Adagrad have a known state");
}

Value number(double x) { return Value::of_float(x); }

/// A group's options as the Python API names them, and its parameters' names.
Value group_value(Kind kind, optim::OptimizerParamGroup& group, std::vector<Value> names) {
  std::vector<Value> d;
  auto put = [&](const char* key, Value v) {
    d.push_back(Value::of_str(key));
    d.push_back(std::move(v));
  };
  auto& options = group.options();
  put("lr", number(options.get_lr()));
  if (kind == Kind::kAdam || kind == Kind::kAdamW) {
    auto betas = kind == Kind::kAdam ? static_cast<optim::AdamOptions&>(options).betas()
                                     : static_cast<optim::AdamWOptions&>(options).betas();
    double eps = 0, wd = 0;
    bool amsgrad = false;
    if (kind == Kind::kAdam) {
      auto& o = static_cast<optim::AdamOptions&>(options);
      eps = o.eps(), wd = o.weight_decay(), amsgrad = o.amsgrad();
    } else {
      auto& o = static_cast<optim::AdamWOptions&>(options);
      eps = o.eps(), wd = o.weight_decay(), amsgrad = o.amsgrad();
    }
    put("betas", Value::tuple({number(std::get<0>(betas)), number(std::get<1>(betas))}));
    put("eps", number(eps));
    put("weight_decay", number(wd));
    put("amsgrad", Value::of_bool(amsgrad));
  } else if (kind == Kind::kSgd) {
    auto& o = static_cast<optim::SGDOptions&>(options);
    put("momentum", number(o.momentum()));
    put("dampening", number(o.dampening()));
    put("weight_decay", number(o.weight_decay()));
    put("nesterov", Value::of_bool(o.nesterov()));
  } else {
    auto& o = static_cast<optim::AdagradOptions&>(options);
    put("lr_decay", number(o.lr_decay()));
    put("weight_decay", number(o.weight_decay()));
    put("initial_accumulator_value", number(o.initial_accumulator_value()));
    put("eps", number(o.eps()));
  }
  put("params", Value::list(std::move(names)));
  return Value::dict(std::move(d));
}

/// Sets a group's options from the checkpoint's dict (keys it does not know are Python's own,
/// such as 'maximize' or 'foreach', and are left alone).
void apply_group(Kind kind, optim::OptimizerParamGroup& group, const Value& saved,
                 const std::string& what) {
  auto& options = group.options();
  auto as_double = [&](const std::string& key, const Value& v) {
    if (v.kind == Value::Kind::kFloat) return v.real;
    if (v.kind == Value::Kind::kInt) return static_cast<double>(v.integer);
    throw UsageError(what + ": '" + key + "' is " + v.repr(40) + ", not a number");
  };
  auto as_bool = [&](const std::string& key, const Value& v) {
    if (v.kind != Value::Kind::kBool) {
      throw UsageError(what + ": '" + key + "' is " + v.repr(40) + ", not a bool");
    }
    return v.boolean;
  };
  for (size_t i = 0; i + 1 < saved.items.size(); i += 2) {
    if (saved.items[i].kind != Value::Kind::kStr) continue;
    const std::string& key = saved.items[i].text;
    const Value& v = saved.items[i + 1];
    if (key == "lr") {
      options.set_lr(as_double(key, v));
    } else if (kind == Kind::kAdam || kind == Kind::kAdamW) {
      auto set = [&](auto& o) {
        if (key == "betas") {
          if ((v.kind != Value::Kind::kTuple && v.kind != Value::Kind::kList) ||
              v.items.size() != 2) {
            throw UsageError(what + ": 'betas' is " + v.repr(40) + ", not two numbers");
          }
          o.betas({as_double(key, v.items[0]), as_double(key, v.items[1])});
        } else if (key == "eps") {
          o.eps(as_double(key, v));
        } else if (key == "weight_decay") {
          o.weight_decay(as_double(key, v));
        } else if (key == "amsgrad") {
          o.amsgrad(as_bool(key, v));
        }
      };
      if (kind == Kind::kAdam) {
        set(static_cast<optim::AdamOptions&>(options));
      } else {
        set(static_cast<optim::AdamWOptions&>(options));
      }
    } else if (kind == Kind::kSgd) {
      auto& o = static_cast<optim::SGDOptions&>(options);
      if (key == "momentum") o.momentum(as_double(key, v));
      if (key == "dampening") o.dampening(as_double(key, v));
      if (key == "weight_decay") o.weight_decay(as_double(key, v));
      if (key == "nesterov") o.nesterov(as_bool(key, v));
    } else {
      auto& o = static_cast<optim::AdagradOptions&>(options);
      if (key == "lr_decay") o.lr_decay(as_double(key, v));
      if (key == "weight_decay") o.weight_decay(as_double(key, v));
      if (key == "initial_accumulator_value") o.initial_accumulator_value(as_double(key, v));
      if (key == "eps") o.eps(as_double(key, v));
    }
  }
}

/// The state a first step would give `p` (SGD without momentum: none), to be loaded over.
std::unique_ptr<optim::OptimizerParamState> fresh_state(Kind kind, optim::OptimizerParamGroup& g,
                                                        const at::Tensor& p) {
  auto zeros = [&] { return at::zeros_like(p, at::MemoryFormat::Preserve); };
  if (kind == Kind::kAdam || kind == Kind::kAdamW) {
    const bool amsgrad = kind == Kind::kAdam
                             ? static_cast<optim::AdamOptions&>(g.options()).amsgrad()
                             : static_cast<optim::AdamWOptions&>(g.options()).amsgrad();
    auto fill = [&](auto s) {
      s->step(0);
      s->exp_avg(zeros());
      s->exp_avg_sq(zeros());
      if (amsgrad) s->max_exp_avg_sq(zeros());
      return std::unique_ptr<optim::OptimizerParamState>(std::move(s));
    };
    if (kind == Kind::kAdam) return fill(std::make_unique<optim::AdamParamState>());
    return fill(std::make_unique<optim::AdamWParamState>());
  }
  if (kind == Kind::kSgd) {
    if (static_cast<optim::SGDOptions&>(g.options()).momentum() == 0) return nullptr;
    auto s = std::make_unique<optim::SGDParamState>();
    s->momentum_buffer(zeros());
    return s;
  }
  auto s = std::make_unique<optim::AdagradParamState>();  // Adagrad makes its state up front
  s->sum(at::full_like(
      p, static_cast<optim::AdagradOptions&>(g.options()).initial_accumulator_value()));
  return s;
}

/// A step tensor and where its value goes after a load.
struct StepSlot {
  std::string key;
  at::Tensor tensor;
  std::function<void(int64_t)> set;
};

/// An optimizer state's tensors by field name (and its step slot).
void state_fields(Kind kind, optim::OptimizerParamState& state,
                  std::vector<std::pair<std::string, at::Tensor>>& tensors,
                  std::function<void(int64_t)>& set_step, int64_t& step, bool& has_step) {
  auto adam = [&](auto& s) {
    tensors = {{"exp_avg", s.exp_avg()}, {"exp_avg_sq", s.exp_avg_sq()}};
    if (s.max_exp_avg_sq().defined()) tensors.push_back({"max_exp_avg_sq", s.max_exp_avg_sq()});
    step = s.step(), has_step = true;
    set_step = [&s](int64_t v) { s.step(v); };
  };
  if (kind == Kind::kAdam) {
    adam(static_cast<optim::AdamParamState&>(state));
  } else if (kind == Kind::kAdamW) {
    adam(static_cast<optim::AdamWParamState&>(state));
  } else if (kind == Kind::kSgd) {
    auto& s = static_cast<optim::SGDParamState&>(state);
    if (s.momentum_buffer().defined()) tensors = {{"momentum_buffer", s.momentum_buffer()}};
  } else {
    auto& s = static_cast<optim::AdagradParamState&>(state);
    tensors = {{"sum", s.sum()}};
    step = s.step(), has_step = true;
    set_step = [&s](int64_t v) { s.step(v); };
  }
}

}  // namespace

void TrainingState::add_module(const std::string& prefix, torch::nn::Module& module,
                               std::vector<SplitRule> rules) {
  modules_.push_back({prefix, &module, std::move(rules)});
}

void TrainingState::add_optimizer(const std::string& prefix, torch::optim::Optimizer& optimizer) {
  optimizers_.push_back({prefix, &optimizer});
}

void TrainingState::add_value(const std::string& key, Value* value) {
  if (!value) throw UsageError("value '" + key + "': a null pointer");
  values_.emplace_back(key, value);
}

namespace {

/// One build of the partition: the tensors of modules and optimizers, the plain values, and the
/// step slots. Kept with the state while a load runs.
struct TrainingStateBuild {
  Partition partition;
  ValueList values;
  std::vector<StepSlot> steps;
  /// optim prefix + ".param_groups" -> the optimizer and its groups' parameter names
  std::map<std::string, std::pair<optim::Optimizer*, std::vector<std::vector<std::string>>>> groups;
  /// keys of each parameter's optimizer state, by (optimizer, parameter)
  std::map<std::pair<optim::Optimizer*, void*>, std::vector<std::string>> state_keys;
};

TrainingStateBuild build_state(const std::vector<TrainingState::ModuleEntry>& modules,
                               const std::vector<TrainingState::OptimizerEntry>& opts,
                               const std::vector<std::pair<std::string, Value*>>& values) {
  TrainingStateBuild b;
  std::map<void*, std::pair<std::string, std::string>> names;  // impl -> (name, partition key)
  const bool single = modules.size() == 1;
  for (size_t m = 0; m < modules.size(); ++m) {
    TensorList tensors;
    std::vector<std::string> keys;
    for (const auto& item : modules[m].module->named_parameters(true)) {
      const std::string key = join(modules[m].prefix, item.key());
      names.emplace(item.value().unsafeGetTensorImpl(),
                    std::make_pair(single ? item.key() : key, key));
      tensors.push_back({key, item.value()});
    }
    for (const auto& item : modules[m].module->named_buffers(true)) {
      tensors.push_back({join(modules[m].prefix, item.key()), item.value()});
    }
    for (const auto& t : tensors) keys.push_back(t.key);
    const auto& rules = modules[m].rules;
    const auto which = match_rules(rules, keys);
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (which[i] < 0) {
        b.partition.add(tensors[i].key, tensors[i].tensor);
      } else {
        const SplitRule& r = rules[static_cast<size_t>(which[i])];
        b.partition.add_split(tensors[i].key, tensors[i].tensor, r.dim, r.group);
      }
    }
  }
  for (const auto& [prefix, opt] : opts) {
    const Kind kind = kind_of(*opt, prefix);
    std::vector<Value> groups;
    std::vector<std::vector<std::string>> group_names;
    for (auto& group : opt->param_groups()) {
      std::vector<Value> param_names;
      group_names.emplace_back();
      for (auto& p : group.params()) {
        auto it = names.find(p.unsafeGetTensorImpl());
        if (it == names.end()) {
          throw UsageError("optimizer '" + prefix + "' holds a parameter of shape " +
                           shape_str(shape_of(p)) +
                           " that no module of the state has; add its module to the state so "
                           "its parameters have names");
        }
        const auto& [name, param_key] = it->second;
        param_names.push_back(Value::of_str(name));
        group_names.back().push_back(name);
        auto state = opt->state().find(p.unsafeGetTensorImpl());
        if (state == opt->state().end()) continue;
        std::vector<std::pair<std::string, at::Tensor>> fields;
        std::function<void(int64_t)> set_step;
        int64_t step = 0;
        bool has_step = false;
        state_fields(kind, *state->second, fields, set_step, step, has_step);
        const std::string base = join(prefix, "state." + name) + ".";
        auto& keys = b.state_keys[{opt, p.unsafeGetTensorImpl()}];
        for (auto& [field, t] : fields) {
          keys.push_back(base + field);
          if (shape_of(t) == shape_of(p)) {
            b.partition.add_like(base + field, t, param_key);
          } else {
            b.partition.add(base + field, t);
          }
        }
        if (has_step) {
          // A float64 scalar tensor (exact to 2^53 steps); Python's optimizers keep a float32
          // one under the same key, converted on load like any tensor.
          at::Tensor t = at::scalar_tensor(static_cast<double>(step), at::kDouble);
          keys.push_back(base + "step");
          b.partition.add(base + "step", t);
          b.steps.push_back({base + "step", t, set_step});
        }
      }
      groups.push_back(group_value(kind, group, std::move(param_names)));
    }
    b.values.emplace_back(join(prefix, "param_groups"), Value::list(std::move(groups)));
    b.groups[join(prefix, "param_groups")] = {opt, std::move(group_names)};
  }
  for (const auto& [key, value] : values) b.values.emplace_back(key, *value);
  return b;
}

}  // namespace

namespace {

/// A scheduler's step count: LibTorch keeps it protected and offers no state_dict; a pointer to
/// the member, taken through a class derived from LRScheduler, reads and sets it on any one.
struct SchedulerSteps : optim::LRScheduler {
  static unsigned optim::LRScheduler::*count() { return &SchedulerSteps::step_count_; }
};

std::string last_epoch_key(const std::string& prefix) {
  return prefix.empty() ? "last_epoch" : prefix + ".last_epoch";
}

}  // namespace

void TrainingState::add_scheduler(const std::string& prefix, optim::LRScheduler& scheduler) {
  schedulers_.emplace_back(prefix, &scheduler);
}

Partition TrainingState::prepare_save(const std::string& path, MPI_Comm comm,
                                      SaveOptions& options) const {
  // Building is this rank's; a failure (an unknown optimizer, a parameter without a name) is
  // every rank's error, never a rank left alone in the save.
  TrainingStateBuild b;
  {
    const std::string name = "shardload::TrainingState::save(" + path + ")";
    Communicator c(comm, options.timeout_seconds, name);
    PhaseRunner(c, name).run("prepare", [&] { b = build_state(modules_, optimizers_, values_); });
  }
  for (auto& v : b.values) options.values.push_back(std::move(v));
  for (const auto& [prefix, sched] : schedulers_) {
    options.values.emplace_back(last_epoch_key(prefix),
                                Value::of_int(sched->*SchedulerSteps::count()));
  }
  return std::move(b.partition);
}

SaveResult TrainingState::save(const std::string& path, MPI_Comm comm, SaveOptions options) {
  Partition partition = prepare_save(path, comm, options);
  return shardload::save(partition, path, comm, options);
}

SaveHandle TrainingState::save_async(const std::string& path, MPI_Comm comm, SaveOptions options) {
  Partition partition = prepare_save(path, comm, options);
  return shardload::save_async(partition, path, comm, options);
}

LoadResult TrainingState::load(const std::string& path, MPI_Comm comm, LoadOptions options) {
  std::vector<std::pair<optim::Optimizer*, void*>> created;
  auto undo = [&] {
    for (const auto& [opt, impl] : created) opt->state().erase(impl);
  };
  LoadResult result;
  TrainingStateBuild b;
  try {
    {
      const std::string name = "shardload::TrainingState::load(" + path + ")";
      Communicator c(comm, options.timeout_seconds, name);
      PhaseRunner(c, name).run("prepare", [&] {
        // A fresh optimizer's state, made as its first step would, to load into.
        for (const auto& [prefix, opt] : optimizers_) {
          const Kind kind = kind_of(*opt, prefix);
          for (auto& group : opt->param_groups()) {
            for (auto& p : group.params()) {
              void* impl = p.unsafeGetTensorImpl();
              if (opt->state().count(impl)) continue;
              if (auto s = fresh_state(kind, group, p)) {
                opt->state()[impl] = std::move(s);
                created.emplace_back(opt, impl);
              }
            }
          }
        }
        b = build_state(modules_, optimizers_, values_);
      });
    }
    for (const auto& [key, value] : b.values) options.value_keys.push_back(key);
    for (const auto& [prefix, sched] : schedulers_) {
      options.value_keys.push_back(last_epoch_key(prefix));
    }
    result = shardload::load(b.partition, path, comm, options);
  } catch (...) {
    undo();
    throw;
  }
  // The tensors are in place; now the steps, the plain values and the groups' options.
  const std::set<std::string> missing(result.missing_keys.begin(), result.missing_keys.end());
  for (auto& slot : b.steps) {
    if (missing.count(slot.key)) continue;
    const double v = slot.tensor.item<double>();
    if (!(v >= 0) || v > 9.007199254740992e15 || v != std::floor(v)) {
      throw FormatError(path + ": key '" + slot.key + "': a step of " + std::to_string(v));
    }
    slot.set(static_cast<int64_t>(v));
  }
  for (const auto& [opt, impl] : created) {  // no state in the checkpoint (strict=false)
    const auto& keys = b.state_keys[{opt, impl}];
    if (!keys.empty() && std::all_of(keys.begin(), keys.end(),
                                     [&](const std::string& k) { return missing.count(k) > 0; })) {
      opt->state().erase(impl);
    }
  }
  std::map<std::string, Value*> user;
  for (const auto& [key, value] : values_) user[key] = value;
  std::map<std::string, optim::LRScheduler*> schedulers;
  for (const auto& [prefix, sched] : schedulers_) schedulers[last_epoch_key(prefix)] = sched;
  for (const auto& [key, value] : result.values) {
    if (auto it = user.find(key); it != user.end()) {
      *it->second = value;
      continue;
    }
    if (auto it = schedulers.find(key); it != schedulers.end()) {
      if (value.kind != Value::Kind::kInt || value.integer < 0 ||
          value.integer > std::numeric_limits<unsigned>::max()) {
        throw FormatError(path + ": value '" + key + "' is not a scheduler's step count");
      }
      it->second->*SchedulerSteps::count() = static_cast<unsigned>(value.integer);
      continue;
    }
    auto g = b.groups.find(key);
    if (g == b.groups.end()) continue;
    auto& [opt, names] = g->second;
    const std::string what = path + ": value '" + key + "'";
    if (value.kind != Value::Kind::kList || value.items.size() != opt->param_groups().size()) {
      throw UsageError(what + " has " +
                       (value.kind == Value::Kind::kList ? std::to_string(value.items.size())
                                                         : std::string("no list of")) +
                       " param groups, the optimizer " +
                       std::to_string(opt->param_groups().size()));
    }
    const Kind kind = kind_of(*opt, key);
    for (size_t i = 0; i < value.items.size(); ++i) {
      const Value& saved = value.items[i];
      std::set<std::string> theirs;
      bool has_params = false;
      for (size_t k = 0; saved.kind == Value::Kind::kDict && k + 1 < saved.items.size(); k += 2) {
        if (saved.items[k].kind == Value::Kind::kStr && saved.items[k].text == "params") {
          has_params = saved.items[k + 1].kind == Value::Kind::kList;
          for (const auto& n : saved.items[k + 1].items) theirs.insert(n.text);
        }
      }
      if (!has_params || theirs != std::set<std::string>(names[i].begin(), names[i].end())) {
        throw UsageError(what + ": group " + std::to_string(i) +
                         " holds other parameters in the checkpoint than in the optimizer");
      }
      apply_group(kind, opt->param_groups()[i], saved, what);
    }
  }
  return result;
}

}  // namespace shardload
