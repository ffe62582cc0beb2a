// Planner scale benchmark: what one rank spends on the declaration exchange, the resolution and
// its share of the load plan, as load() does them, for simulated jobs of up to 16,384 ranks:
// Megatron-like DP x TP x PP, FSDP (every tensor split along dim 0 over all ranks, even slabs,
// empty ones at the tail), HSDP (shard over 8, replicate across the groups) and MoE expert
// parallelism. Rows marked "whole plan" time what load() did before: every rank resolved per
// rank and planned every rank's pieces. No MPI: the other ranks' contributions to the exchange
// are computed beforehand (they are their work, in parallel), and the one rank's share is timed
// and its heap measured.
//
//   build/bench/plan_scale [--repeat N] [--only SUBSTRING]
//
// Each configuration runs in a child process of its own (--repeat times; the median time and the
// largest peak are reported). Peak heap is the high-water mark of live heap bytes above what was
// live when the timed part started (the global index, which the load holds anyway, is not
// counted); "max RSS" is the child's whole resident peak, inputs included.
#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <new>
#include <string>
#include <vector>

#include "core/chunk_record.h"
#include "loader/declarations.h"
#include "sharding/load_plan.h"
#include "sharding/resolve.h"

// ---- Heap accounting: live bytes and their high-water mark (glibc's malloc_usable_size) ----

namespace {
std::atomic<int64_t> g_live{0};
std::atomic<int64_t> g_peak{0};
void note(int64_t delta) {
  const int64_t now = g_live.fetch_add(delta, std::memory_order_relaxed) + delta;
  int64_t peak = g_peak.load(std::memory_order_relaxed);
  while (now > peak && !g_peak.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}
}  // namespace

void* operator new(size_t n) {
  void* p = std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  note(static_cast<int64_t>(malloc_usable_size(p)));
  return p;
}
void operator delete(void* p) noexcept {
  if (!p) return;
  note(-static_cast<int64_t>(malloc_usable_size(p)));
  std::free(p);
}
void operator delete(void* p, size_t) noexcept { operator delete(p); }
void* operator new[](size_t n) { return operator new(n); }
void operator delete[](void* p) noexcept { operator delete(p); }
void operator delete[](void* p, size_t) noexcept { operator delete(p); }

namespace shardload {
namespace {

using Clock = std::chrono::steady_clock;

// ---- The simulated job ----

enum class Kind {
  kMegatron,  ///< DP x TP x PP, matrices as explicit boxes (add_shard)
  kFsdp,      ///< every tensor split along dim 0 over all ranks (add_split, all ranks)
  kHsdp,      ///< split along dim 0 over groups of `tp` consecutive ranks, `dp` groups
  kMoe,       ///< expert parallel: `tp` experts per layer, one per EP rank, `dp` replicas
};

struct Config {
  std::string name;
  int dp = 1, tp = 1, pp = 1;
  int tensors = 0;
  int save_tp = 8;             ///< the checkpoint was saved by TP save_tp (one stage, one replica)
  bool small_tensors = false;  ///< every tensor 1 KiB and replicated instead of GPT layers
  Kind kind = Kind::kMegatron;
  bool whole = false;  ///< time the whole plan with per-rank resolution (load() before)
  int ranks() const { return dp * tp * pp; }
};

constexpr int64_t kHidden = 1024;
constexpr int kPerLayer = 12;

struct TensorSpec {
  std::string key;
  Shape shape;
  int split_dim;  ///< -1: replicated
};

/// One GPT layer as Megatron shards it: column-parallel matrices split on dim 0, row-parallel
/// ones on dim 1, norms and some biases replicated.
std::vector<TensorSpec> layer_specs(int layer) {
  const std::string p = "decoder.layers." + std::to_string(layer) + ".";
  const int64_t h = kHidden;
  return {
      {p + "input_layernorm.weight", {h}, -1},
      {p + "input_layernorm.bias", {h}, -1},
      {p + "self_attention.query_key_value.weight", {3 * h, h}, 0},
      {p + "self_attention.query_key_value.bias", {3 * h}, 0},
      {p + "self_attention.dense.weight", {h, h}, 1},
      {p + "self_attention.dense.bias", {h}, -1},
      {p + "post_attention_layernorm.weight", {h}, -1},
      {p + "post_attention_layernorm.bias", {h}, -1},
      {p + "mlp.dense_h_to_4h.weight", {4 * h, h}, 0},
      {p + "mlp.dense_h_to_4h.bias", {4 * h}, 0},
      {p + "mlp.dense_4h_to_h.weight", {h, 4 * h}, 1},
      {p + "mlp.dense_4h_to_h.bias", {h}, -1},
  };
}

/// The tensors of stage `pp` (all of them for stage -1), in state-dict order.
std::vector<TensorSpec> tensors_of(const Config& c, int pp) {
  std::vector<TensorSpec> out;
  if (c.small_tensors) {
    for (int i = 0; i < c.tensors; ++i) {
      out.push_back({"buffers." + std::to_string(i), {256}, -1});  // 1 KiB of float32
    }
    return out;
  }
  const int layers = c.tensors / kPerLayer;
  for (int l = 0; l < layers; ++l) {
    if (pp >= 0 && static_cast<int64_t>(l) * c.pp / layers != pp) continue;
    for (auto& t : layer_specs(l)) out.push_back(std::move(t));
  }
  return out;
}

DType dtype_of(const Config& c) { return c.small_tensors ? DType::kFloat32 : DType::kBFloat16; }

// Rank order: tensor-parallel fastest, then data-parallel, then pipeline stage.
int tp_of(const Config& c, int rank) { return rank % c.tp; }
int pp_of(const Config& c, int rank) { return rank / (c.tp * c.dp); }

/// MoE: per layer the attention (replicated), the router and one expert pair per EP rank.
std::vector<TensorSpec> moe_layer_specs(int layer, int experts) {
  const std::string p = "layers." + std::to_string(layer) + ".";
  const int64_t h = kHidden;
  std::vector<TensorSpec> out = {
      {p + "input_layernorm.weight", {h}, -1},
      {p + "self_attention.query_key_value.weight", {3 * h, h}, -1},
      {p + "self_attention.dense.weight", {h, h}, -1},
      {p + "post_attention_layernorm.weight", {h}, -1},
      {p + "mlp.router.weight", {experts, h}, -1},
  };
  for (int e = 0; e < experts; ++e) {
    out.push_back({p + "mlp.experts." + std::to_string(e) + ".w1", {4 * h, h}, e});
    out.push_back({p + "mlp.experts." + std::to_string(e) + ".w2", {h, 4 * h}, e});
  }
  return out;
}

int moe_layers(const Config& c) { return std::max(1, c.tensors / (5 + 2 * c.tp)); }

/// FSDP's even slab of n rows for `rank` of `ranks`: ceil(n / ranks) rows, fewer or none at
/// the tail.
int64_t fsdp_slab(int64_t n, int ranks, int rank) {
  const int64_t even = (n + ranks - 1) / ranks;
  return std::clamp<int64_t>(n - even * rank, 0, even);
}

/// What `rank` declares: its stage's tensors, matrices as explicit boxes (add_shard); FSDP and
/// HSDP as splits (add_split); MoE its experts and the shared layers whole.
std::vector<Declaration> declarations_of(const Config& c, int rank) {
  std::vector<Declaration> out;
  if (c.kind == Kind::kMoe) {
    const int ep = rank % c.tp;
    for (int l = 0; l < moe_layers(c); ++l) {
      for (auto& t : moe_layer_specs(l, c.tp)) {
        if (t.split_dim >= 0 && t.split_dim != ep) continue;  // another EP rank's expert
        Declaration d;
        d.key = std::move(t.key);
        d.dtype = DType::kBFloat16;
        d.local_shape = t.shape;
        out.push_back(std::move(d));
      }
    }
    return out;
  }
  if (c.kind == Kind::kFsdp || c.kind == Kind::kHsdp) {
    const int shard = c.kind == Kind::kFsdp ? c.ranks() : c.tp;
    const int at = c.kind == Kind::kFsdp ? rank : rank % c.tp;
    for (auto& t : tensors_of(c, -1)) {
      Declaration d;
      d.key = std::move(t.key);
      d.dtype = dtype_of(c);
      d.kind = Declaration::Kind::kSplit;
      d.split_dim = 0;
      d.local_shape = t.shape;
      d.local_shape[0] = fsdp_slab(t.shape[0], shard, at);
      if (c.kind == Kind::kHsdp) {
        for (int m = 0; m < c.tp; ++m) d.group.push_back(rank - at + m);
      }
      out.push_back(std::move(d));
    }
    return out;
  }
  const int tp = tp_of(c, rank);
  for (auto& t : tensors_of(c, pp_of(c, rank))) {
    Declaration d;
    d.key = std::move(t.key);
    d.dtype = dtype_of(c);
    d.global_shape = t.shape;
    d.local_shape = t.shape;
    d.offset.assign(t.shape.size(), 0);
    if (t.split_dim < 0) {
      d.kind = Declaration::Kind::kReplicated;
    } else {
      d.kind = Declaration::Kind::kShard;
      const int64_t part = t.shape[t.split_dim] / c.tp;
      d.local_shape[t.split_dim] = part;
      d.offset[t.split_dim] = part * tp;
    }
    out.push_back(std::move(d));
  }
  return out;
}

/// Ranks with the same key here declare the same canonical layout (the exchange's grouping, worked
/// out without building every rank's declarations).
std::vector<int64_t> layout_key(const Config& c, int rank) {
  switch (c.kind) {
    case Kind::kMegatron:
      return {tp_of(c, rank), pp_of(c, rank)};
    case Kind::kHsdp:
    case Kind::kMoe:
      return {rank % c.tp};
    case Kind::kFsdp: {
      // The slab of each distinct row count.
      std::vector<int64_t> key;
      for (int64_t rows : {kHidden, 3 * kHidden, 4 * kHidden}) {
        key.push_back(fsdp_slab(rows, c.ranks(), rank));
      }
      return key;
    }
  }
  return {};
}

/// The global index of the checkpoint, in state-dict order.
std::vector<ChunkRecord> index_of(const Config& c) {
  std::vector<ChunkRecord> index;
  int64_t order = 0;
  if (c.kind == Kind::kMoe) {
    // Saved by the same expert-parallel layout: every tensor one chunk, an expert's in its EP
    // rank's file.
    for (int l = 0; l < moe_layers(c); ++l) {
      for (auto& t : moe_layer_specs(l, c.tp)) {
        ChunkRecord r;
        r.key = t.key;
        r.dtype = DType::kBFloat16;
        r.global_shape = t.shape;
        r.offset.assign(t.shape.size(), 0);
        r.shape = t.shape;
        r.file = static_cast<int32_t>(t.split_dim >= 0 ? t.split_dim : order % c.tp);
        r.dataset = "/t/" + std::to_string(index.size());
        r.nbytes = static_cast<uint64_t>(numel(r.shape) * dtype_size(r.dtype));
        r.order = order++;
        index.push_back(std::move(r));
      }
    }
    return index;
  }
  for (auto& t : tensors_of(c, -1)) {
    const int parts = t.split_dim < 0 ? 1 : c.save_tp;
    for (int s = 0; s < parts; ++s) {
      ChunkRecord r;
      r.key = t.key;
      r.dtype = dtype_of(c);
      r.global_shape = t.shape;
      r.offset.assign(t.shape.size(), 0);
      r.shape = t.shape;
      if (t.split_dim >= 0) {
        const int64_t part = t.shape[t.split_dim] / parts;
        r.shape[t.split_dim] = part;
        r.offset[t.split_dim] = part * s;
      }
      r.file = t.split_dim < 0 ? static_cast<int32_t>(order % c.save_tp) : s;
      r.dataset = "/t/" + std::to_string(index.size());
      r.nbytes = static_cast<uint64_t>(numel(r.shape) * dtype_size(r.dtype));
      r.order = order;
      index.push_back(std::move(r));
    }
    ++order;
  }
  return index;
}

// ---- One measurement ----

double cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct Measure {
  bool ok = false;
  double seconds = 0;
  double exchange_s = 0, resolve_s = 0, plan_s = 0;
  double cpu_s = 0;  ///< CPU time of the timed part (the machine may be shared)
  double peak_mib = 0;
  double maxrss_mib = 0;
  int64_t groups = 0, pieces = 0, messages = 0;
  int64_t bytes_received = 0;  ///< by the rank in the exchange
  bool check = false;          ///< every stored byte read exactly once, by a needing rank
};

/// Rank 0 of configuration `c`: the exchange as rank 0 sees it, the resolution, the plan.
Measure measure(const Config& c) {
  const int ranks = c.ranks();
  const std::vector<ChunkRecord> index = index_of(c);
  const std::vector<Declaration> mine = declarations_of(c, 0);
  // What the other ranks contribute: their hash and size (step 1) and, for the first rank of each
  // layout, its bytes (step 2). Ranks with the same layout key declare the same canonical
  // layout, so their bytes are computed once per key.
  std::vector<LayoutHash> hashes(static_cast<size_t>(ranks));
  std::vector<uint64_t> sizes(static_cast<size_t>(ranks));
  std::vector<std::string> representative_bytes(static_cast<size_t>(ranks));
  {
    std::map<std::vector<int64_t>, std::pair<LayoutHash, std::string>> positions;
    for (int r = 0; r < ranks; ++r) {
      auto [it, fresh] = positions.try_emplace(layout_key(c, r));
      if (fresh) {
        it->second.second = encode_layout(declarations_of(c, r), r);
        it->second.first = layout_hash(it->second.second);
        representative_bytes[static_cast<size_t>(r)] = it->second.second;
      }
      hashes[static_cast<size_t>(r)] = it->second.first;
      sizes[static_cast<size_t>(r)] = it->second.second.size();
    }
  }

  Measure m;
  const int64_t base = g_live.load();
  g_peak.store(base);
  const double cpu_start = cpu_seconds();
  const auto start = Clock::now();
  // Step 1: this rank's bytes and hash; every rank's hash received.
  const std::string bytes = encode_layout(mine, 0);
  const LayoutHash hash = layout_hash(bytes);
  const std::vector<LayoutHash> received_hashes = hashes;
  const std::vector<uint64_t> received_sizes = sizes;
  HashGroups groups = group_by_hash(received_hashes, received_sizes);
  // Step 2: the representatives' bytes received; step 3: this rank's own check.
  const std::vector<std::string> gathered = representative_bytes;
  const int representative = groups.representatives[static_cast<size_t>(groups.layout_of[0])];
  const bool collided =
      gathered[static_cast<size_t>(representative)] != bytes || !(hash == received_hashes[0]);
  DeclaredLayouts declared = assemble_layouts(std::move(groups), gathered);
  const auto exchanged = Clock::now();
  // Resolution and plan, as load() does them (which drops the layouts once resolved): splits over
  // all ranks kept symbolic and this rank's share of the plan; or (whole) as load() did before.
  const RankGroups needs = resolve_declarations(declared, /*symbolic_splits=*/!c.whole);
  declared = {};
  const auto resolved = Clock::now();
  const LoadPlan plan = c.whole ? plan_load(index, needs, PlanOptions{})
                                : plan_load_for_rank(index, needs, 0, PlanOptions{});
  const auto planned = Clock::now();
  auto secs = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  m.seconds = secs(start, planned);
  m.cpu_s = cpu_seconds() - cpu_start;
  m.exchange_s = secs(start, exchanged);
  m.resolve_s = secs(exchanged, resolved);
  m.plan_s = secs(resolved, planned);
  m.peak_mib = static_cast<double>(g_peak.load() - base) / (1 << 20);

  m.groups = needs.groups();
  m.pieces = static_cast<int64_t>(plan.pieces.size());
  m.messages = static_cast<int64_t>(plan.messages.size());
  m.bytes_received = 24 * static_cast<int64_t>(ranks);
  for (const auto& b : gathered) m.bytes_received += static_cast<int64_t>(b.size());
  // Correctness in the same run. Every reader receives what it reads and is one of its
  // message's ranks; nothing is missing, unexpected or uncovered.
  bool readers_receive = true;
  for (const Message& msg : plan.messages) {
    const auto rs = plan.ranks_of(msg);
    for (int32_t p : msg.pieces) {
      const Piece& piece = plan.pieces[static_cast<size_t>(p)];
      readers_receive &= plan.need_of(piece, piece.reader) >= 0 && piece.reader == msg.reader &&
                         std::binary_search(rs.begin(), rs.end(), piece.reader);
    }
  }
  bool bytes_right = true;
  if (c.whole) {
    // Every stored byte is needed here, so each is read exactly once.
    int64_t stored = 0, read = 0;
    for (const auto& row : index) stored += static_cast<int64_t>(row.nbytes);
    for (int64_t b : plan.read_bytes) read += b;
    bytes_right = stored == read;
  } else {
    // Rank 0's share: it receives every element it needs once, and reads what its pieces say.
    int64_t needed = 0, received = 0, read = 0;
    for (const Need& n : needs.concrete_list(0)) {
      needed += box_numel(n.region) * dtype_size(n.dtype);
    }
    for (const Piece& p : plan.pieces) {
      if (plan.need_of(p, 0) >= 0) received += p.nbytes;
      if (p.reader == 0) read += p.nbytes;
    }
    bytes_right = needed == received && read == plan.read_bytes[0];
  }
  m.check = !collided && bytes_right && readers_receive && plan.missing_keys.empty() &&
            plan.unexpected_keys.empty() && plan.uncovered.empty();
  m.ok = true;
  return m;
}

/// Runs measure(c) in a child process and returns what it reports.
Measure in_child(const Config& c) {
  int fds[2];
  if (pipe(fds) != 0) std::abort();
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    Measure m;
    try {
      m = measure(c);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: %s\n", c.name.c_str(), e.what());
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    m.maxrss_mib = static_cast<double>(ru.ru_maxrss) / 1024.0;
    const ssize_t written = write(fds[1], &m, sizeof m);
    _exit(written == static_cast<ssize_t>(sizeof m) ? 0 : 2);
  }
  close(fds[1]);
  Measure m;
  if (read(fds[0], &m, sizeof m) != static_cast<ssize_t>(sizeof m)) m.ok = false;
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  return m;
}

std::string with_commas(int64_t v) {
  std::string s = std::to_string(v);
  for (int i = static_cast<int>(s.size()) - 3; i > 0; i -= 3) s.insert(static_cast<size_t>(i), ",");
  return s;
}

std::string bytes_str(int64_t b) {
  char buf[32];
  if (b >= (1 << 20)) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(b) / (1 << 20));
  } else {
    std::snprintf(buf, sizeof buf, "%.0f KiB", static_cast<double>(b) / 1024);
  }
  return buf;
}

}  // namespace
}  // namespace shardload

int main(int argc, char** argv) {
  using shardload::Config;
  int repeat = 3;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--repeat" && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (a == "--only" && i + 1 < argc) {
      only = argv[++i];
    } else {
      std::fprintf(stderr, "usage: %s [--repeat N] [--only SUBSTRING]\n", argv[0]);
      return 2;
    }
  }
  using shardload::Kind;
  auto fsdp = [](int ranks, int tensors, bool whole = false) {
    Config c{"FSDP " + std::to_string(ranks) + (whole ? " (whole plan, as before)" : ""), ranks, 1,
             1, tensors};
    c.kind = Kind::kFsdp;
    c.whole = whole;
    return c;
  };
  auto hsdp = [](int shard, int replicas, int tensors) {
    Config c{"HSDP shard " + std::to_string(shard) + " x replicate " + std::to_string(replicas),
             replicas, shard, 1, tensors};
    c.kind = Kind::kHsdp;
    return c;
  };
  auto moe = [](int ep, int dp, int tensors) {
    Config c{"MoE EP " + std::to_string(ep) + " x DP " + std::to_string(dp), dp, ep, 1, tensors};
    c.kind = Kind::kMoe;
    return c;
  };
  const std::vector<Config> configs = {
      {"DP 8 x TP 8", 8, 8, 1, 1000},
      {"DP 32 x TP 8", 32, 8, 1, 1000},
      {"DP 128 x TP 8", 128, 8, 1, 1000},
      {"DP 8 x TP 8", 8, 8, 1, 10000},
      {"DP 64 x TP 8 x PP 8", 64, 8, 8, 10000},
      {"DP 64 x TP 8 x PP 8, saved at TP 4", 64, 8, 8, 10000, 4},
      {"DP 256 x TP 8 x PP 8", 256, 8, 8, 10000},
      {"DP 2, 1 KiB tensors, replicated", 2, 1, 1, 100000, 2, true},
      fsdp(256, 1000, true),
      fsdp(1024, 1000, true),
      fsdp(64, 1000),
      fsdp(256, 1000),
      fsdp(1024, 1000),
      fsdp(4096, 10000),
      fsdp(16384, 10000),
      hsdp(8, 512, 10000),
      moe(64, 64, 10000),
      moe(64, 256, 10000),
  };
  std::printf(
      "| layout | ranks | tensors | rank groups | bytes received | exchange + resolve + plan | "
      "(exchange / resolve / plan) | CPU | peak heap | max RSS | pieces | messages | check |\n"
      "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- "
      "|\n");
  bool all_ok = true;
  for (const Config& c : configs) {
    if (!only.empty() && c.name.find(only) == std::string::npos) continue;
    std::vector<shardload::Measure> runs;
    for (int i = 0; i < repeat; ++i) runs.push_back(shardload::in_child(c));
    double peak = 0, rss = 0;
    bool ok = true, check = true;
    for (const auto& m : runs) {
      ok &= m.ok;
      check &= m.check;
      peak = std::max(peak, m.peak_mib);
      rss = std::max(rss, m.maxrss_mib);
    }
    // The run with the median total, and its parts.
    std::sort(runs.begin(), runs.end(),
              [](const auto& a, const auto& b) { return a.seconds < b.seconds; });
    const auto& m = runs[runs.size() / 2];
    all_ok &= ok && check;
    std::printf(
        "| %s | %s | %s | %lld | %s | %.3f s | %.3f / %.3f / %.3f | %.3f s | %.1f MiB | %.0f MiB "
        "| %s | %s | %s |\n",
        c.name.c_str(), shardload::with_commas(c.ranks()).c_str(),
        shardload::with_commas(c.tensors).c_str(), static_cast<long long>(m.groups),
        shardload::bytes_str(m.bytes_received).c_str(), m.seconds, m.exchange_s, m.resolve_s,
        m.plan_s, m.cpu_s, peak, rss, shardload::with_commas(m.pieces).c_str(),
        shardload::with_commas(m.messages).c_str(), !ok ? "FAILED" : (check ? "ok" : "WRONG"));
    std::fflush(stdout);
  }
  std::printf("\nMedian of %d runs per row, one rank's share; peak heap excludes the index.\n",
              repeat);
  return all_ok ? 0 : 1;
}
