// TrainingState (C++): a module, a torch::optim optimizer and plain values in one collective call;
// the optimizer's state keyed by parameter name, split like its parameter, resharded between a
// replicated and a split layout, and a resumed run equal to an uninterrupted one bit for bit.
#include <torch/nn/modules/linear.h>
#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/schedulers/step_lr.h>
#include <torch/optim/sgd.h>

#include <cstdlib>
#include <functional>
#include <memory>

#include "loader/shardload.h"
#include "mpi_test_util.h"
#include "sharding/box.h"

namespace shardload::testing {
namespace {

constexpr int64_t kIn = 6, kHidden = 8, kOut = 4;

/// fc1 (column parallel: weight and bias split along dim 0) and fc2 (row parallel: weight split
/// along dim 1, bias replicated) with `hidden` of the kHidden columns.
struct NetImpl : torch::nn::Module {
  explicit NetImpl(int64_t hidden) {
    fc1 = register_module("fc1", torch::nn::Linear(kIn, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(hidden, kOut));
  }
  at::Tensor forward(const at::Tensor& x) { return fc2(at::tanh(fc1(x))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Net);

const std::vector<SplitRule> kSplit = {{R"(fc1\.(weight|bias)$)", 0, {}},
                                       {R"(fc2\.weight$)", 1, {}}};

using MakeOptimizer = std::function<std::unique_ptr<torch::optim::Optimizer>(Net&)>;

std::vector<std::pair<std::string, MakeOptimizer>> optimizers() {
  return {
      {"sgd",
       [](Net& n) {
         return std::make_unique<torch::optim::SGD>(
             n->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(1e-2));
       }},
      {"adam",
       [](Net& n) {
         return std::make_unique<torch::optim::Adam>(n->parameters(),
                                                     torch::optim::AdamOptions(1e-2));
       }},
      {"adamw",
       [](Net& n) {
         return std::make_unique<torch::optim::AdamW>(
             n->parameters(), torch::optim::AdamWOptions(1e-2).amsgrad(true).weight_decay(0.1));
       }},
      {"adagrad",
       [](Net& n) {
         return std::make_unique<torch::optim::Adagrad>(n->parameters(),
                                                        torch::optim::AdagradOptions(0.1));
       }},
  };
}

void train(Net& net, torch::optim::Optimizer& opt, int steps, int64_t seed) {
  torch::manual_seed(seed);
  for (int i = 0; i < steps; ++i) {
    auto loss = net->forward(torch::randn({5, kIn})).square().mean();
    opt.zero_grad();
    loss.backward();
    opt.step();
  }
}

/// Every state tensor of `opt` by "<param name>.<field>", and its steps.
std::map<std::string, at::Tensor> state_of(Net& net, torch::optim::Optimizer& opt) {
  std::map<std::string, at::Tensor> out;
  for (const auto& p : net->named_parameters()) {
    auto it = opt.state().find(p.value().unsafeGetTensorImpl());
    if (it == opt.state().end()) continue;
    auto* s = it->second.get();
    auto put = [&](const char* f, const at::Tensor& t) {
      if (t.defined()) out[p.key() + "." + f] = t;
    };
    if (auto* a = dynamic_cast<torch::optim::AdamParamState*>(s)) {
      put("exp_avg", a->exp_avg()), put("exp_avg_sq", a->exp_avg_sq());
      put("max_exp_avg_sq", a->max_exp_avg_sq());
      out[p.key() + ".step"] = at::scalar_tensor(static_cast<double>(a->step()), at::kDouble);
    } else if (auto* w = dynamic_cast<torch::optim::AdamWParamState*>(s)) {
      put("exp_avg", w->exp_avg()), put("exp_avg_sq", w->exp_avg_sq());
      put("max_exp_avg_sq", w->max_exp_avg_sq());
      out[p.key() + ".step"] = at::scalar_tensor(static_cast<double>(w->step()), at::kDouble);
    } else if (auto* m = dynamic_cast<torch::optim::SGDParamState*>(s)) {
      put("momentum_buffer", m->momentum_buffer());
    } else if (auto* g = dynamic_cast<torch::optim::AdagradParamState*>(s)) {
      put("sum", g->sum());
      out[p.key() + ".step"] = at::scalar_tensor(static_cast<double>(g->step()), at::kDouble);
    }
  }
  return out;
}

/// This rank's slab of a global tensor of the Net under kSplit.
at::Tensor slab(const std::string& key, const at::Tensor& t) {
  int64_t dim = -1;
  if (key.rfind("fc1.weight", 0) == 0 || key.rfind("fc1.bias", 0) == 0) dim = 0;
  if (key.rfind("fc2.weight", 0) == 0) dim = 1;
  if (dim < 0 || t.dim() == 0) return t;
  Shape shape(t.sizes().begin(), t.sizes().end());
  Box box = even_split(shape, dim, world_size(), world_rank());
  return t.narrow(dim, box.offset[dim], box.shape[dim]);
}

int64_t my_hidden() { return even_split({kHidden}, 0, world_size(), world_rank()).shape[0]; }

TEST(TrainingState, OptimizerStateReshardsBetweenReplicatedAndSplitLayouts) {
  SharedDir dir{"training_state"};
  for (const auto& [name, make] : optimizers()) {
    SCOPED_TRACE(name);
    // The global run, the same on every rank.
    torch::manual_seed(3);
    Net global(kHidden);
    auto global_opt = make(global);
    train(global, *global_opt, 3, 11);
    const auto want = state_of(global, *global_opt);
    Value step = Value::of_int(3);
    TrainingState saved;
    saved.add_module("model", *global);
    saved.add_optimizer("optim", *global_opt);
    saved.add_value("step", &step);
    saved.save(dir.path + "/" + name, MPI_COMM_WORLD);

    // Replicated -> split: each rank's fresh optimizer ends with its slab of the global state,
    // and its options and the plain value come back.
    torch::manual_seed(4);
    Net local(my_hidden());
    auto local_opt = make(local);
    local_opt->param_groups()[0].options().set_lr(123.0);
    Value got_step = Value::none();
    TrainingState split;
    split.add_module("model", *local, kSplit);
    split.add_optimizer("optim", *local_opt);
    split.add_value("step", &got_step);
    LoadResult r = split.load(dir.path + "/" + name, MPI_COMM_WORLD);
    EXPECT_TRUE(r.missing_keys.empty() && r.unexpected_keys.empty());
    EXPECT_TRUE(got_step == step);
    EXPECT_EQ(local_opt->param_groups()[0].options().get_lr(),
              global_opt->param_groups()[0].options().get_lr());
    const auto got = state_of(local, *local_opt);
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [key, tensor] : want) {
      ASSERT_TRUE(got.count(key)) << key;
      EXPECT_TRUE(same_bits(got.at(key), slab(key, tensor))) << key;
    }

    // Split -> replicated: saved from the slabs, every rank gets the whole global state back.
    TrainingState from_split;
    from_split.add_module("model", *local, kSplit);
    from_split.add_optimizer("optim", *local_opt);
    from_split.save(dir.path + "/" + name + "-split", MPI_COMM_WORLD);
    torch::manual_seed(5);
    Net whole(kHidden);
    auto whole_opt = make(whole);
    TrainingState replicated;
    replicated.add_module("model", *whole);
    replicated.add_optimizer("optim", *whole_opt);
    replicated.load(dir.path + "/" + name + "-split", MPI_COMM_WORLD);
    const auto back = state_of(whole, *whole_opt);
    ASSERT_EQ(back.size(), want.size());
    for (const auto& [key, tensor] : want) {
      EXPECT_TRUE(same_bits(back.at(key), tensor)) << key;
    }
  }
}

/// `steps` steps of `train`, each followed by a step of the LR schedule.
void train_scheduled(Net& net, torch::optim::Optimizer& opt, torch::optim::StepLR& sched, int steps,
                     int64_t seed) {
  for (int i = 0; i < steps; ++i) {
    train(net, opt, 1, seed + i);
    sched.step();
  }
}

double lr_of(torch::optim::Optimizer& opt) { return opt.param_groups()[0].options().get_lr(); }

TEST(TrainingState, ResumedTrainingEqualsAnUninterruptedRun) {
  // AdamW with a StepLR schedule that halves the rate every 2 steps: resumed after 3 steps, the
  // schedule must continue at step 3 (a step count lost would halve at other steps). Saved
  // asynchronously, while training goes on (parameters, moments, steps and the schedule all
  // change, with the training's own collectives on the world): the checkpoint is step 3's.
  SharedDir dir{"training_resume"};
  const auto adamw = optimizers()[2].second;
  torch::manual_seed(7);
  Net reference(kHidden);
  auto reference_opt = adamw(reference);
  torch::optim::StepLR reference_sched(*reference_opt, 2, 0.5);
  train_scheduled(reference, *reference_opt, reference_sched, 3, 21);
  train_scheduled(reference, *reference_opt, reference_sched, 3, 31);

  torch::manual_seed(7);
  Net first(kHidden);
  auto first_opt = adamw(first);
  torch::optim::StepLR first_sched(*first_opt, 2, 0.5);
  train_scheduled(first, *first_opt, first_sched, 3, 21);
  TrainingState before;
  before.add_module("", *first);
  before.add_optimizer("optim", *first_opt);
  before.add_scheduler("sched", first_sched);
  SaveHandle saving = before.save_async(dir.path + "/run", MPI_COMM_WORLD, {.step = 3});
  train_scheduled(first, *first_opt, first_sched, 2, 99);
  for (int i = 0; i < 20; ++i) {
    int64_t x = i, sum = 0;
    MPI_Allreduce(&x, &sum, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    ASSERT_EQ(sum, i * world_size());
  }
  const SaveResult saved = saving.wait();
  EXPECT_TRUE(saving.done() && saved.asynchronous);
  EXPECT_EQ(saved.path, dir.path + "/run/step-3");

  torch::manual_seed(8);
  Net resumed(kHidden);
  auto resumed_opt = adamw(resumed);
  torch::optim::StepLR resumed_sched(*resumed_opt, 2, 0.5);
  TrainingState after;
  after.add_module("", *resumed);
  after.add_optimizer("optim", *resumed_opt);
  after.add_scheduler("sched", resumed_sched);
  const LoadResult r = after.load(dir.path + "/run", MPI_COMM_WORLD);  // ROOT/latest
  EXPECT_TRUE(r.missing_keys.empty() && r.unexpected_keys.empty());
  EXPECT_EQ(lr_of(*resumed_opt), lr_of(*reference_opt) * 2);  // step 3's (halved once since)
  train_scheduled(resumed, *resumed_opt, resumed_sched, 3, 31);
  EXPECT_EQ(lr_of(*resumed_opt), lr_of(*reference_opt));
  EXPECT_EQ(lr_of(*resumed_opt), 1e-2 * 0.25);  // halved at the 3rd and 5th steps (counts 2, 4)
  for (const auto& p : reference->named_parameters()) {
    EXPECT_TRUE(same_bits(resumed->named_parameters()[p.key()], p.value())) << p.key();
  }
}

TEST(AsyncSave, OnASubCommunicatorFreedWhileItRunsAndItsErrorsOnEveryRank) {
  // Ranks split in two groups, each saving its own checkpoint; the group's communicator is freed
  // with the save in flight: freeing it finishes the save first.
  SharedDir dir{"async_sub"};
  MPI_Comm half = MPI_COMM_NULL;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() % 2, world_rank(), &half);
  const std::string path = dir.path + "/group" + std::to_string(world_rank() % 2);
  at::Tensor t = at::arange(12, at::kFloat).reshape({3, 4}) + world_rank() % 2;
  const at::Tensor want = t.clone();
  Partition p;
  p.add("t", t);
  SaveHandle h = save_async(p, path, half);
  t.fill_(-1);
  MPI_Comm_free(&half);
  EXPECT_TRUE(h.done());
  EXPECT_EQ(h.wait().path, path);
  at::Tensor got = at::zeros({3, 4});
  Partition q;
  q.add("t", got);
  load(q, path, MPI_COMM_SELF);
  EXPECT_TRUE(same_bits(got, want));

  // The background part's error (the target exists): the same on every rank, from wait().
  SaveHandle again = save_async(p, dir.path + "/group0", MPI_COMM_WORLD);
  std::string message;
  try {
    again.wait();
  } catch (const UsageError& e) {
    message = e.what();
  }
  EXPECT_NE(message.find("exists"), std::string::npos) << message;
  EXPECT_TRUE(same_on_all_ranks(message));
}

/// {"model": net, "optim": opt}.
TrainingState model_and_optimizer(Net& net, torch::optim::Optimizer& opt) {
  TrainingState state;
  state.add_module("model", *net);
  state.add_optimizer("optim", opt);
  return state;
}

TEST(TrainingState, AFailedLoadLeavesAFreshOptimizerFreshAndForeignParametersAreRefused) {
  SharedDir dir{"training_refused"};
  Net net(kHidden);
  auto opt = optimizers()[1].second(net);
  // a fresh Adam: only the param groups
  model_and_optimizer(net, *opt).save(dir.path + "/ckpt", MPI_COMM_WORLD);

  Net other(kHidden);
  auto fresh = optimizers()[1].second(other);
  TrainingState load_state = model_and_optimizer(other, *fresh);
  EXPECT_THROW(load_state.load(dir.path + "/ckpt", MPI_COMM_WORLD), LoadVerdictError);
  EXPECT_TRUE(fresh->state().empty());  // the state made for the load is gone again
  LoadOptions loose;
  loose.strict = false;
  LoadResult r = load_state.load(dir.path + "/ckpt", MPI_COMM_WORLD, loose);
  EXPECT_FALSE(r.missing_keys.empty());
  EXPECT_TRUE(fresh->state().empty());  // the checkpoint had none, so none after

  Net stranger(kHidden);
  auto foreign = optimizers()[0].second(stranger);
  EXPECT_THROW(model_and_optimizer(net, *foreign).save(dir.path + "/never", MPI_COMM_WORLD),
               UsageError);
}

}  // namespace
}  // namespace shardload::testing

namespace shardload::testing {
namespace {

/// Run by tests/python/test_training_state.py between its two launches, with
/// SHARDLOAD_INTEROP_DIR naming a directory whose `py` is a state saved by the Python API:
/// {"model": fc1/fc2 as Net, "optim": AdamW(lr=0.03, weight_decay=0.2, amsgrad=True) after 3
/// steps, "step": 3}. It loads that into a C++ Net and AdamW, checks the options and the step,
/// and saves what it holds as `cpp`, which the Python test loads back and compares bit for bit.
TEST(TrainingStateInterop, LoadsAPythonStateAndSavesItBack) {
  const char* dir = std::getenv("SHARDLOAD_INTEROP_DIR");
  if (!dir) GTEST_SKIP() << "run by tests/python/test_training_state.py";
  Net net(kHidden);
  torch::optim::AdamW opt(net->parameters(), torch::optim::AdamWOptions(1.0).amsgrad(true));
  Value step = Value::none();
  TrainingState state;
  state.add_module("model", *net);
  state.add_optimizer("optim", opt);
  state.add_value("step", &step);
  LoadResult r = state.load(std::string(dir) + "/py", MPI_COMM_WORLD);
  EXPECT_TRUE(r.missing_keys.empty() && r.unexpected_keys.empty());
  EXPECT_TRUE(step == Value::of_int(3)) << step.repr();
  auto& options = static_cast<torch::optim::AdamWOptions&>(opt.param_groups()[0].options());
  EXPECT_EQ(options.lr(), 0.03);
  EXPECT_EQ(options.weight_decay(), 0.2);
  EXPECT_TRUE(options.amsgrad());
  const auto held = state_of(net, opt);
  EXPECT_EQ(held.size(), 16u);  // 4 parameters x (exp_avg, exp_avg_sq, max_exp_avg_sq, step)
  EXPECT_EQ(held.at("fc1.weight.step").item<double>(), 3.0);
  state.save(std::string(dir) + "/cpp", MPI_COMM_WORLD, {.overwrite = true});
}

}  // namespace
}  // namespace shardload::testing
