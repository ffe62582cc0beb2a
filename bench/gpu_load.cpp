// The GPU load against the machine's limits, measured in one run (issue 10's goal: at least 80%
// of min(page-cache read, pinned host-to-device) bandwidth on one GPU):
//
//   mpirun -np 1 gpu_load [--gib 8] [--dir DIR] [--threads T] [--repeat N]
//
// At several ranks (all tensors replicated) it measures the NCCL route instead: every rank
// receives what the others read. Each rank uses the device (node-local rank % visible devices),
// the node-local rank coming from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED).
//
// 1. makes a state dict of about GIB GiB on this rank's GPU (large matrices of several dtypes
//    and many small tensors), saves it with shardload (from CUDA tensors), keeps the files in
//    the page cache;
// 2. measures the page-cache read bandwidth (T threads pread every shard file into pinned host
//    memory) and the pinned host-to-device bandwidth (1 GiB copies), each the best of N;
// 3. loads the checkpoint into fresh CUDA tensors with shardload (median of N), checks every
//    tensor bit for bit against the original on the GPU, and reports the transport used.
// Prints a human summary and one JSON line (rank 0). Exits 1 when a tensor differs, 2 without a
// GPU.
#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <fcntl.h>
#include <mpi.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include "loader/shardload.h"

namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// `threads` threads pread the files (split into 64 MiB pieces) into one pinned buffer each.
double page_cache_read(const std::vector<std::string>& files, int threads, int64_t* bytes) {
  struct Piece {
    std::string path;
    int64_t offset, size;
  };
  std::vector<Piece> pieces;
  *bytes = 0;
  for (const auto& f : files) {
    struct stat st {};
    ::stat(f.c_str(), &st);
    for (int64_t off = 0; off < st.st_size; off += 64 << 20) {
      pieces.push_back({f, off, std::min<int64_t>(64 << 20, st.st_size - off)});
    }
    *bytes += st.st_size;
  }
  std::vector<at::Tensor> buffers;
  for (int t = 0; t < threads; ++t) {
    buffers.push_back(
        at::empty({64 << 20}, at::TensorOptions().dtype(at::kByte).pinned_memory(true)));
  }
  std::atomic<size_t> next{0};
  auto start = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      char* buf = static_cast<char*>(buffers[static_cast<size_t>(t)].data_ptr());
      for (size_t i; (i = next.fetch_add(1)) < pieces.size();) {
        int fd = ::open(pieces[i].path.c_str(), O_RDONLY);
        int64_t done = 0;
        while (fd >= 0 && done < pieces[i].size) {
          ssize_t n = ::pread(fd, buf + done, static_cast<size_t>(pieces[i].size - done),
                              pieces[i].offset + done);
          if (n <= 0) break;
          done += n;
        }
        if (fd >= 0) ::close(fd);
      }
    });
  }
  for (auto& t : pool) t.join();
  return since(start);
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  double gib = 8;
  int repeat = 3;
  int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency() / 2));
  std::string dir = (std::filesystem::temp_directory_path() / "shardload-gpu-load").string();
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--gib") gib = std::atof(argv[i + 1]);
    if (a == "--dir") dir = argv[i + 1];
    if (a == "--threads") threads = std::atoi(argv[i + 1]);
    if (a == "--repeat") repeat = std::atoi(argv[i + 1]);
  }
  auto& hooks = at::detail::getCUDAHooks();
  if (!hooks.hasCUDA() || hooks.deviceCount() == 0) {
    if (rank == 0) std::printf("gpu_load: no CUDA device visible; nothing measured\n");
    MPI_Finalize();
    return 2;
  }
  // This rank's device: node-local rank (from MPI, whatever the launcher) % visible devices.
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
  int local = 0;
  MPI_Comm_rank(node, &local);
  MPI_Comm_free(&node);
  const at::Device device(at::kCUDA, static_cast<int8_t>(local % hooks.deviceCount()));
  const auto on_gpu = at::TensorOptions().device(device);

  // 1. The state dict, on the GPU: 1/16 of the bytes in 256 small tensors, the rest in large
  //    matrices of float32, bfloat16 and float16.
  const int64_t total = static_cast<int64_t>(gib * (1ll << 30));
  shardload::TensorList sd;
  at::manual_seed(0);
  const int64_t big = total * 15 / 16 / 24;  // bytes per large matrix
  const at::ScalarType types[] = {at::kFloat, at::kBFloat16, at::kHalf};
  for (int i = 0; i < 24; ++i) {
    at::ScalarType t = types[i % 3];
    int64_t cols = 4096, rows = big / (cols * c10::elementSize(t));
    sd.push_back(
        {"layers." + std::to_string(i) + ".weight", at::randn({rows, cols}, on_gpu.dtype(t))});
  }
  for (int i = 0; i < 256; ++i) {
    sd.push_back({"layers." + std::to_string(i) + ".bias",
                  at::randn({total / 16 / 256 / 4}, on_gpu.dtype(at::kFloat))});
  }
  int64_t nbytes = 0;
  for (const auto& t : sd) nbytes += static_cast<int64_t>(t.tensor.nbytes());
  const std::string ckpt = dir + "/ckpt";
  if (rank == 0) std::filesystem::create_directories(dir);
  MPI_Barrier(MPI_COMM_WORLD);
  auto t0 = Clock::now();
  shardload::SaveOptions save_options;
  save_options.overwrite = true;
  shardload::save(shardload::Partition::from_global(sd, {}, rank, ranks), ckpt, MPI_COMM_WORLD,
                  save_options);
  const double save_s = since(t0);

  // 2. The machine's limits, in this run.
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(ckpt)) {
    if (e.path().extension() == ".h5") files.push_back(e.path().string());
  }
  double read_best = 1e30;
  int64_t file_bytes = 0;
  for (int k = 0; k < repeat; ++k)
    read_best = std::min(read_best, page_cache_read(files, threads, &file_bytes));
  const int64_t h2d_bytes = int64_t{1} << 30;
  at::Tensor pinned =
      at::empty({h2d_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  at::Tensor dev = at::empty({h2d_bytes}, on_gpu.dtype(at::kByte));
  pinned.fill_(1);
  dev.copy_(pinned);
  double h2d_best = 1e30;
  for (int k = 0; k < repeat; ++k) {
    auto t = Clock::now();
    dev.copy_(pinned);
    hooks.deviceSynchronize(device.index());
    h2d_best = std::min(h2d_best, since(t));
  }
  const double read_gibs = file_bytes / read_best / (1 << 30);
  const double h2d_gibs = h2d_bytes / h2d_best / (1 << 30);

  // 3. shardload into fresh CUDA tensors.
  std::vector<double> load_s;
  std::string transport, reason;
  int wrong = 0;
  for (int k = 0; k < repeat; ++k) {
    shardload::TensorList zeros;
    for (const auto& t : sd) zeros.push_back({t.key, at::zeros_like(t.tensor)});
    shardload::Partition p = shardload::Partition::from_global(zeros, {}, rank, ranks);
    hooks.deviceSynchronize(device.index());
    shardload::LoadOptions options;
    options.timeout_seconds = 120;  // a hang is a named error, not the step's limit
    shardload::LoadResult r = shardload::load(p, ckpt, MPI_COMM_WORLD, options);
    hooks.deviceSynchronize(device.index());
    load_s.push_back(r.wall_seconds);
    transport = r.transport;
    reason = r.transport_reason;
    if (k == 0) {
      for (size_t i = 0; i < sd.size(); ++i) {
        if (!at::equal(p.entries()[i].tensor.view(at::kByte), sd[i].tensor.view(at::kByte))) {
          ++wrong;
        }
      }
    }
  }
  int wrong_all = 0;
  MPI_Allreduce(&wrong, &wrong_all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  const double load_med = median(load_s);
  const double load_gibs = nbytes / load_med / (1 << 30);
  const double limit = std::min(read_gibs, h2d_gibs);
  if (rank == 0) {
    std::printf(
        "gpu_load: %d rank(s), %.2f GiB state dict on %s\n"
        "  save from CUDA tensors      %8.3f s\n"
        "  page-cache read (%2d thr.)   %8.2f GiB/s\n"
        "  pinned host-to-device       %8.2f GiB/s\n"
        "  shardload load into CUDA    %8.3f s = %.2f GiB/s (%.0f%% of the limit %.2f GiB/s), "
        "transport %s%s%s\n"
        "  wrong tensors               %8d\n",
        ranks, nbytes / double(1 << 30), device.str().c_str(), save_s, threads, read_gibs, h2d_gibs,
        load_med, load_gibs, 100 * load_gibs / limit, limit, transport.c_str(),
        reason.empty() ? "" : ": ", reason.c_str(), wrong_all);
    std::printf(
        "{\"ranks\": %d, \"bytes\": %lld, \"save_seconds\": %.4f, \"page_cache_read_gibs\": %.3f, "
        "\"h2d_gibs\": %.3f, \"load_seconds\": %.4f, \"load_gibs\": %.3f, \"fraction_of_limit\": "
        "%.3f, \"transport\": \"%s\", \"wrong_tensors\": %d, \"read_threads\": %d}\n",
        ranks, static_cast<long long>(nbytes), save_s, read_gibs, h2d_gibs, load_med, load_gibs,
        load_gibs / limit, transport.c_str(), wrong_all, threads);
  }
  MPI_Finalize();
  return wrong_all ? 1 : 0;
}
