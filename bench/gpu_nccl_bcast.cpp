// The NCCL broadcast bandwidth between the job's ranks, nccl-tests style: for each size, the time
// of one ncclBroadcast from rank 0, the algorithm and bus bandwidth, and the number of wrong
// 32-bit words on the receivers, side by side. It is the limit that shardload's NCCL route is
// measured against (scripts/gpu_check.sh runs it at 2 ranks on one GPU, each rank given its own
// NCCL_HOSTID so that NCCL takes them for two hosts and uses its socket transport):
//
//   mpirun -np 2 gpu_nccl_bcast [--max-mib 1024] [--iters 5] [--warmup 2]
//
// Each rank uses the device (node-local rank % visible devices), the node-local rank coming
// from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED). Prints a table and one JSON line (rank 0).
// Exits 1 when a word arrived wrong, 2 without a GPU, 3 when a CUDA or NCCL call fails.
#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

int g_rank = 0;

[[noreturn]] void fail(const char* what, const char* why, const char* file, int line) {
  std::fprintf(stderr, "gpu_nccl_bcast: rank %d: %s failed: %s (%s:%d)\n", g_rank, what, why, file,
               line);
  std::fflush(stderr);
  MPI_Abort(MPI_COMM_WORLD, 3);
  std::exit(3);
}

#define SHARDLOAD_BENCH_CUDA(call)                                                  \
  do {                                                                              \
    cudaError_t e_ = (call);                                                        \
    if (e_ != cudaSuccess) fail(#call, cudaGetErrorString(e_), __FILE__, __LINE__); \
  } while (0)
#define SHARDLOAD_BENCH_NCCL(call)                                                  \
  do {                                                                              \
    ncclResult_t r_ = (call);                                                       \
    if (r_ != ncclSuccess) fail(#call, ncclGetErrorString(r_), __FILE__, __LINE__); \
  } while (0)

uint32_t word(int64_t i, int64_t bytes) {
  return static_cast<uint32_t>(i * 2654435761u) ^ static_cast<uint32_t>(bytes);
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  int64_t max_mib = 1024;
  int iters = 5, warmup = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--max-mib") max_mib = std::atoll(argv[i + 1]);
    if (a == "--iters") iters = std::max(1, std::atoi(argv[i + 1]));
    if (a == "--warmup") warmup = std::max(0, std::atoi(argv[i + 1]));
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    if (g_rank == 0) std::printf("gpu_nccl_bcast: no CUDA device visible; nothing measured\n");
    MPI_Finalize();
    return 2;
  }
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &node);
  int local = 0;
  MPI_Comm_rank(node, &local);
  MPI_Comm_free(&node);
  const int device = local % devices;
  SHARDLOAD_BENCH_CUDA(cudaSetDevice(device));

  int version = 0;
  SHARDLOAD_BENCH_NCCL(ncclGetVersion(&version));
  ncclUniqueId id;
  if (g_rank == 0) SHARDLOAD_BENCH_NCCL(ncclGetUniqueId(&id));
  MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD);
  double t0 = MPI_Wtime();
  ncclComm_t comm;
  SHARDLOAD_BENCH_NCCL(ncclCommInitRank(&comm, ranks, id, g_rank));
  const double init_s = MPI_Wtime() - t0;
  cudaStream_t stream;
  SHARDLOAD_BENCH_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t start, stop;
  SHARDLOAD_BENCH_CUDA(cudaEventCreate(&start));
  SHARDLOAD_BENCH_CUDA(cudaEventCreate(&stop));

  std::vector<int64_t> sizes;
  for (int64_t mib = 1; mib <= max_mib; mib *= 4) sizes.push_back(mib << 20);
  const int64_t largest = sizes.empty() ? 0 : sizes.back();
  void* buf = nullptr;
  SHARDLOAD_BENCH_CUDA(cudaMalloc(&buf, static_cast<size_t>(std::max<int64_t>(largest, 4))));
  std::vector<uint32_t> host(static_cast<size_t>(largest / 4));

  if (g_rank == 0) {
    const char* hostid = std::getenv("NCCL_HOSTID");
    std::printf("gpu_nccl_bcast: %d ranks, NCCL %d, device %d, NCCL_HOSTID %s, init %.2f s\n",
                ranks, version, device, hostid ? hostid : "(unset)", init_s);
    std::printf("%12s %10s %12s %12s %8s\n", "bytes", "time_us", "algbw_GB/s", "busbw_GB/s",
                "wrong");
  }
  std::string json = "[";
  int64_t wrong_total = 0;
  for (int64_t bytes : sizes) {
    const int64_t words = bytes / 4;
    if (g_rank == 0) {
      for (int64_t i = 0; i < words; ++i) host[static_cast<size_t>(i)] = word(i, bytes);
      SHARDLOAD_BENCH_CUDA(
          cudaMemcpy(buf, host.data(), static_cast<size_t>(bytes), cudaMemcpyHostToDevice));
    } else {
      SHARDLOAD_BENCH_CUDA(cudaMemset(buf, 0xff, static_cast<size_t>(bytes)));
    }
    SHARDLOAD_BENCH_CUDA(cudaDeviceSynchronize());
    for (int k = 0; k < warmup; ++k) {
      SHARDLOAD_BENCH_NCCL(
          ncclBroadcast(buf, buf, static_cast<size_t>(bytes), ncclInt8, 0, comm, stream));
    }
    SHARDLOAD_BENCH_CUDA(cudaStreamSynchronize(stream));
    MPI_Barrier(MPI_COMM_WORLD);
    SHARDLOAD_BENCH_CUDA(cudaEventRecord(start, stream));
    for (int k = 0; k < iters; ++k) {
      SHARDLOAD_BENCH_NCCL(
          ncclBroadcast(buf, buf, static_cast<size_t>(bytes), ncclInt8, 0, comm, stream));
    }
    SHARDLOAD_BENCH_CUDA(cudaEventRecord(stop, stream));
    SHARDLOAD_BENCH_CUDA(cudaEventSynchronize(stop));
    float ms = 0;
    SHARDLOAD_BENCH_CUDA(cudaEventElapsedTime(&ms, start, stop));
    // The slowest rank's time is the broadcast's.
    double us = 1000.0 * ms / iters, us_max = 0;
    MPI_Allreduce(&us, &us_max, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    int64_t wrong = 0;
    if (g_rank != 0) {
      SHARDLOAD_BENCH_CUDA(
          cudaMemcpy(host.data(), buf, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost));
      for (int64_t i = 0; i < words; ++i) wrong += host[static_cast<size_t>(i)] != word(i, bytes);
    }
    int64_t wrong_all = 0;
    MPI_Allreduce(&wrong, &wrong_all, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    wrong_total += wrong_all;
    // Broadcast: bus bandwidth = algorithm bandwidth (nccl-tests' factor 1).
    const double algbw = bytes / (us_max * 1e3);
    if (g_rank == 0) {
      std::printf("%12lld %10.1f %12.2f %12.2f %8lld\n", static_cast<long long>(bytes), us_max,
                  algbw, algbw, static_cast<long long>(wrong_all));
      char item[160];
      std::snprintf(item, sizeof(item),
                    "%s{\"bytes\": %lld, \"us\": %.1f, \"algbw_gbs\": %.3f, \"wrong\": %lld}",
                    json.size() > 1 ? ", " : "", static_cast<long long>(bytes), us_max, algbw,
                    static_cast<long long>(wrong_all));
      json += item;
    }
  }
  json += "]";
  if (g_rank == 0) {
    std::printf(
        "{\"ranks\": %d, \"nccl_version\": %d, \"init_seconds\": %.3f, \"iters\": %d, "
        "\"sizes\": %s, \"wrong_words\": %lld}\n",
        ranks, version, init_s, iters, json.c_str(), static_cast<long long>(wrong_total));
  }
  cudaFree(buf);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  cudaStreamDestroy(stream);
  ncclCommDestroy(comm);
  MPI_Finalize();
  return wrong_total ? 1 : 0;
}
