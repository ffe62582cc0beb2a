// shardload demo: the restart story under mpirun. A small transformer-like model whose large
// weights are split across the ranks (column/row parallel, like Megatron) and whose small ones
// are replicated; a few training steps; save; a fresh model restored bit for bit; then the two
// failures users meet most (an extra layer, a DDP "module." prefix).
#include <mpi.h>
#include <torch/torch.h>

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <optional>
#include <regex>
#include <sstream>

#include "io/commit/checkpoint_dir.h"
#include "loader/shardload.h"
#include "tools/commands.h"
#include "tools/progress_display.h"
#include "tools/torch_cuda.h"
#include "transport/communicator.h"

namespace shardload::tools {
namespace {

constexpr int64_t kVocab = 96, kModel = 64, kHidden = 256, kLayers = 2, kSeq = 16;

struct BlockImpl : torch::nn::Module {
  BlockImpl() {
    ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kModel})));
    qkv = register_module("qkv", torch::nn::Linear(kModel, 3 * kModel));
    proj = register_module("proj", torch::nn::Linear(kModel, kModel));
    ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kModel})));
    fc1 = register_module("fc1", torch::nn::Linear(kModel, kHidden));
    fc2 = register_module("fc2", torch::nn::Linear(kHidden, kModel));
  }
  torch::Tensor forward(torch::Tensor x) {
    auto parts = qkv(ln1(x)).chunk(3, -1);
    auto att = torch::softmax(torch::matmul(parts[0], parts[1].transpose(-2, -1)) /
                                  std::sqrt(static_cast<double>(kModel)),
                              -1);
    x = x + proj(torch::matmul(att, parts[2]));
    return x + fc2(torch::gelu(fc1(ln2(x))));
  }
  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr}, fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Block);

struct TinyGptImpl : torch::nn::Module {
  explicit TinyGptImpl(bool extra_layer = false) {
    embed = register_module("embed", torch::nn::Embedding(kVocab, kModel));
    layers = register_module("layers", torch::nn::ModuleList());
    for (int i = 0; i < kLayers; ++i) layers->push_back(Block());
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kModel})));
    head = register_module("head", torch::nn::Linear(kModel, kVocab));
    if (extra_layer) adapter = register_module("adapter", torch::nn::Linear(kModel, kModel));
  }
  torch::Tensor forward(torch::Tensor tokens) {
    auto x = embed(tokens);
    for (const auto& layer : *layers) x = layer->as<Block>()->forward(x);
    return head(norm(x));
  }
  torch::nn::Embedding embed{nullptr};
  torch::nn::ModuleList layers{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear head{nullptr}, adapter{nullptr};
};
TORCH_MODULE(TinyGpt);

/// Megatron's layout: qkv and fc1 column parallel (split dim 0), proj and fc2 row parallel
/// (split dim 1), the embedding and head split over the vocabulary; norms and biases of row
/// parallel layers replicated.
const std::vector<SplitRule> kLayout = {
    {R"(qkv\.(weight|bias)$)", 0, {}}, {R"(fc1\.(weight|bias)$)", 0, {}},
    {R"(proj\.weight$)", 1, {}},       {R"(fc2\.weight$)", 1, {}},
    {R"(^embed\.weight$)", 0, {}},     {R"(^head\.(weight|bias)$)", 0, {}},
};

/// This rank's partition of `model`: split tensors are narrow views of the parameters (this
/// rank's slab, loaded in place), the rest whole. Key names get `prefix` in front.
Partition partition_of(TinyGpt& model, int rank, int ranks, const std::string& prefix = "") {
  TensorList global;
  for (const auto& p : model->named_parameters()) global.push_back({prefix + p.key(), p.value()});
  for (const auto& b : model->named_buffers()) global.push_back({prefix + b.key(), b.value()});
  Partition part;
  for (const auto& [key, tensor] : global) {
    const SplitRule* rule = nullptr;
    for (const auto& r : kLayout) {
      if (std::regex_search(key, std::regex(r.pattern))) {
        rule = &r;
        break;
      }
    }
    if (!rule) {
      part.add(key, tensor);
      continue;
    }
    Shape shape(tensor.sizes().begin(), tensor.sizes().end());
    Box box = even_split(shape, rule->dim, ranks, rank);
    part.add_shard(key, tensor.narrow(rule->dim, box.offset[rule->dim], box.shape[rule->dim]),
                   shape, box.offset);
  }
  return part;
}

/// True when every tensor of `a` equals the same tensor of `b` bit for bit.
bool same_bits(const Partition& a, const Partition& b, std::string& first_bad) {
  for (size_t i = 0; i < a.entries().size(); ++i) {
    const auto& x = a.entries()[i].tensor;
    const auto& y = b.entries()[i].tensor;
    if (!x.sizes().equals(y.sizes()) ||
        !torch::equal(x.contiguous().view(torch::kByte), y.contiguous().view(torch::kByte))) {
      first_bad = a.entries()[i].key;
      return false;
    }
  }
  return true;
}

/// `steps` optimizer steps on the same batch; the loss of each.
std::vector<double> train_steps(TinyGpt& model, torch::optim::Optimizer& opt,
                                const at::Tensor& tokens, int steps) {
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    opt.zero_grad();
    auto logits = model->forward(tokens.narrow(1, 0, kSeq));
    auto loss = torch::nn::functional::cross_entropy(logits.reshape({-1, kVocab}),
                                                     tokens.narrow(1, 1, kSeq).reshape({-1}));
    loss.backward();
    opt.step();
    losses.push_back(loss.item<double>());
  }
  return losses;
}

struct DemoArgs {
  std::string dir;
  bool quiet = false;
  std::string device = "cpu";
};

/// The device of this rank's models: the CPU, or the GPU of its local rank.
torch::Device demo_device(const std::string& name, int local_rank) {
  if (name == "cpu") return torch::kCPU;
  return local_cuda_device(local_rank);
}

int run_demo(const DemoArgs& args) {
  Communicator comm(MPI_COMM_WORLD);
  const int rank = comm.rank(), ranks = comm.size();
  torch::set_num_threads(1);
  auto say = [&](const std::string& s) {
    if (rank == 0) std::cout << s << std::endl;
  };
  const torch::Device device = demo_device(args.device, comm.local_rank());
  int failures = 0;
  auto check = [&](bool ok, const std::string& what) {
    int64_t any = comm.allreduce_max(ok ? int64_t{0} : int64_t{1});
    say(std::string(any ? "  FAILED: " : "  ok: ") + what);
    failures += static_cast<int>(any);
  };

  std::string dir = args.dir;
  if (dir.empty()) dir = (std::filesystem::temp_directory_path() / "shardload-demo").string();
  if (rank == 0) std::filesystem::create_directories(dir);
  comm.barrier();
  const std::string ckpt = dir + "/step-5";
  const std::string ddp_ckpt = dir + "/ddp-step-5";

  // 1. Train: every rank runs the same steps on the same data (data parallel), so the ranks'
  //    full models agree; each rank owns only its slab of the large weights.
  say("shardload demo on " + std::to_string(ranks) + " rank(s), checkpoints under " + dir);
  torch::manual_seed(1234);
  TinyGpt model;
  torch::optim::AdamW opt(model->parameters(), torch::optim::AdamWOptions(1e-2));
  auto tokens = torch::randint(kVocab, {8, kSeq + 1});
  const double loss_value = train_steps(model, opt, tokens, 5).back();
  std::ostringstream l;
  l << "1. trained 5 steps of a " << kLayers << "-layer transformer (loss " << loss_value << ")";
  say(l.str());
  // The whole training state (model, AdamW's moments and steps, the step count) into a run
  // directory: ROOT/step-5, ROOT/latest naming it. Step 6 resumes from it.
  const std::string run_dir = dir + "/run";
  {
    Value step = Value::of_int(5);
    TrainingState state;
    state.add_module("model", *model);
    state.add_optimizer("optim", opt);
    state.add_value("step", &step);
    state.save(run_dir, MPI_COMM_WORLD, {.overwrite = true, .step = 5});
  }
  model->to(device);

  // Progress of the main save and load on rank 0's stderr (none with --quiet).
  std::optional<ProgressDisplay> shown;
  auto progress = [&](const char* operation) -> ProgressCallback {
    if (rank != 0 || args.quiet) return {};
    return shown.emplace(ProgressDisplay::for_stderr(operation)).callback();
  };

  // 2. Save: split weights one chunk per rank, replicated ones written once.
  Partition trained = partition_of(model, rank, ranks);
  SaveResult saved = save(
      trained, ckpt, MPI_COMM_WORLD,
      SaveOptions{.overwrite = true, .metadata = {{"step", "5"}}, .progress = progress("save")});
  if (shown) shown->finish(saved.bytes_written_total);
  say("2. saved " + ckpt + ": " + std::to_string(saved.num_shards) + " shard file(s), " +
      std::to_string(saved.bytes_written_total) + " bytes");
  {
    std::vector<int64_t> all = comm.allgather(saved.bytes_written);
    std::string per = "   bytes written per rank:";
    for (auto b : all) per += " " + std::to_string(b);
    say(per);
  }

  // 3. Restart: a fresh model with another seed, strict load, bit-exact check on every rank.
  torch::manual_seed(999);
  TinyGpt fresh;
  fresh->to(device);
  Partition restored = partition_of(fresh, rank, ranks);
  std::string bad;
  check(!same_bits(trained, restored, bad), "a fresh model differs before loading");
  bad.clear();
  LoadResult r = load(restored, ckpt, MPI_COMM_WORLD,
                      LoadOptions{.name = "TinyGpt", .progress = progress("load")});
  if (shown) shown->finish(r.bytes_read_total);
  std::ostringstream s3;
  s3 << "3. strict load into a fresh model on " << (device.is_cuda() ? "the GPUs" : "the CPUs")
     << ": " << r.bytes_read_total << " bytes read (each byte once: needed " << r.bytes_needed_total
     << "), " << r.wall_seconds << " s, moved by " << r.transport
     << (r.transport_reason.empty() ? "" : " (" + r.transport_reason + ")");
  say(s3.str());
  check(same_bits(trained, restored, bad),
        "every rank's tensors equal the trained ones bit for bit" +
            (bad.empty() ? "" : " (first difference: " + bad + ")"));

  // 4. A model with an extra layer: strict fails and changes nothing; non-strict reports it.
  torch::manual_seed(7);
  TinyGpt bigger(/*extra_layer=*/true);
  bigger->to(device);
  Partition bigger_part = partition_of(bigger, rank, ranks);
  at::Tensor adapter_before = bigger->adapter->weight.clone();
  at::Tensor embed_before = bigger->embed->weight.clone();
  say("4. loading into a model with an extra layer 'adapter':");
  try {
    load(bigger_part, ckpt, MPI_COMM_WORLD, LoadOptions{.name = "TinyGpt"});
    check(false, "strict load should have failed");
  } catch (const LoadVerdictError& e) {
    say("   strict load refused, as PyTorch would:\n   " + std::string(e.what()));
    check(e.result().missing_keys == std::vector<std::string>{"adapter.weight", "adapter.bias"},
          "missing keys are exactly adapter.weight, adapter.bias on every rank");
    check(torch::equal(bigger->embed->weight, embed_before), "the failed load changed nothing");
  }
  LoadResult loose =
      load(bigger_part, ckpt, MPI_COMM_WORLD, LoadOptions{.strict = false, .name = "TinyGpt"});
  std::string missing;
  for (const auto& k : loose.missing_keys) missing += " " + k;
  say("   non-strict load: loaded the rest; missing keys:" + missing);
  check(torch::equal(bigger->adapter->weight, adapter_before),
        "the extra layer kept its own values");
  check(torch::equal(bigger->norm->weight, model->norm->weight), "the shared layers were loaded");

  // 5. A checkpoint saved from a DistributedDataParallel wrapper: every key has "module.".
  Partition ddp = partition_of(model, rank, ranks, "module.");
  save(ddp, ddp_ckpt, MPI_COMM_WORLD, SaveOptions{.overwrite = true});
  torch::manual_seed(5);
  TinyGpt plain;
  plain->to(device);
  Partition plain_part = partition_of(plain, rank, ranks);
  say("5. loading a checkpoint saved with DDP's 'module.' prefix:");
  try {
    load(plain_part, ddp_ckpt, MPI_COMM_WORLD, LoadOptions{.name = "TinyGpt"});
    check(false, "strict load should have failed");
  } catch (const LoadVerdictError& e) {
    bool hinted = !e.result().hints.empty();
    std::string msg = e.what();
    say("   strict load refused (" + std::to_string(e.result().missing_keys.size()) + " missing, " +
        std::to_string(e.result().unexpected_keys.size()) + " unexpected); the hint:\n   " +
        (hinted ? e.result().hints[0] : std::string("(none)")));
    check(hinted, "the error names the common prefix");
  }
  load(plain_part, ddp_ckpt, MPI_COMM_WORLD,
       LoadOptions{.checkpoint_prefix = "module.", .name = "TinyGpt"});
  check(same_bits(trained, plain_part, bad), "with the prefix stripped, the load is bit-exact");

  // 6. Resume training: a fresh model and a fresh optimizer restored from ROOT/latest, three
  //    more steps; the losses are those of a run that never stopped, bit for bit (CPU).
  {
    torch::manual_seed(1234);
    TinyGpt uninterrupted;
    torch::optim::AdamW uninterrupted_opt(uninterrupted->parameters(),
                                          torch::optim::AdamWOptions(1e-2));
    auto same_tokens = torch::randint(kVocab, {8, kSeq + 1});
    const auto want = train_steps(uninterrupted, uninterrupted_opt, same_tokens, 8);

    torch::manual_seed(31);
    TinyGpt resumed;
    torch::optim::AdamW resumed_opt(resumed->parameters(), torch::optim::AdamWOptions(1e-3));
    Value step = Value::none();
    TrainingState state;
    state.add_module("model", *resumed);
    state.add_optimizer("optim", resumed_opt);
    state.add_value("step", &step);
    LoadResult back = state.load(run_dir, MPI_COMM_WORLD);
    const auto got = train_steps(resumed, resumed_opt, same_tokens, 3);
    std::ostringstream s6;
    s6.precision(17);
    s6 << "6. resumed from " << run_dir << " (step " << step.repr() << ", " << back.bytes_read_total
       << " bytes: model and AdamW state) and trained 3 more steps:\n"
       << "   losses " << got[0] << ", " << got[1] << ", " << got[2] << "\n"
       << "   a run that never stopped: " << want[5] << ", " << want[6] << ", " << want[7];
    say(s6.str());
    check(step == Value::of_int(5) &&
              std::equal(got.begin(), got.end(), want.begin() + 5, want.end()),
          "the resumed losses equal the uninterrupted run's bit for bit");
  }

  say(failures == 0 ? "demo finished: all checks passed"
                    : "demo finished: " + std::to_string(failures) + " check(s) FAILED");
  return failures == 0 ? 0 : 1;
}

}  // namespace

Runner add_demo(CLI::App& app) {
  auto args = std::make_shared<DemoArgs>();
  CLI::App* cmd = app.add_subcommand(
      "demo",
      "Collective: train a small split model, save, restore bit for bit, show the "
      "strict/non-strict verdicts and the DDP prefix hint, resume training exactly.");
  cmd->add_option("--dir", args->dir, "where to write the demo checkpoints (default: a temp dir)");
  cmd->add_flag("--quiet", args->quiet, "no progress display on stderr");
  cmd->add_option("--device", args->device,
                  "cpu, or cuda: the models live on each rank's GPU (its local rank's), loaded "
                  "over NCCL where every rank has a GPU of its own")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  return [args]() { return run_demo(*args); };
}

}  // namespace shardload::tools
