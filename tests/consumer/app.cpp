// The consumer of an installed shardload: save a small model split over the ranks, load it into
// fresh tensors, check the values and PyTorch's strict verdict. Run under mpirun -np 2.
#include <ATen/ATen.h>
#include <mpi.h>

#include <cstdio>
#include <string>

#include "loader/shardload.h"
#include "shardload/config.h"

namespace {

/// This rank's model: a weight split along dim 0 over the ranks (Megatron's column parallel) and
/// a replicated bias, filled from `seed`.
shardload::Partition model(at::Tensor& weight, at::Tensor& bias, int rank, int ranks, double seed) {
  const int64_t rows = 4 * ranks, cols = 3;
  weight =
      at::arange(rows * cols, at::kFloat).reshape({rows, cols}).add(seed).narrow(0, 4 * rank, 4);
  weight = weight.contiguous();
  bias = at::full({cols}, seed, at::kDouble);
  shardload::Partition p;
  p.add_split("layer.weight", weight, 0);
  p.add("layer.bias", bias);
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const std::string dir = argc > 1 ? argv[1] : "consumer-ckpt";
  int failures = 0;
  auto check = [&](bool ok, const char* what) {
    if (!ok) {
      std::fprintf(stderr, "rank %d: FAILED: %s\n", rank, what);
      ++failures;
    }
  };
  try {
    at::Tensor w, b, w2, b2;
    shardload::Partition saved = model(w, b, rank, ranks, 1.0);
    shardload::SaveResult s = shardload::save(saved, dir, MPI_COMM_WORLD,
                                              {.overwrite = true, .metadata = {{"step", "7"}}});
    check(s.num_shards == ranks, "one shard file per rank");

    shardload::Partition fresh = model(w2, b2, rank, ranks, 100.0);
    shardload::LoadResult r = shardload::load(fresh, dir, MPI_COMM_WORLD);
    check(r.ok && r.missing_keys.empty() && r.unexpected_keys.empty(), "strict load is clean");
    check(at::equal(w, w2) && at::equal(b, b2), "loaded values equal the saved ones");

    shardload::Partition extra = model(w2, b2, rank, ranks, 5.0);
    extra.add("layer.scale", at::ones({2}));
    try {
      shardload::load(extra, dir, MPI_COMM_WORLD);
      check(false, "a strict load with a missing key throws");
    } catch (const shardload::LoadVerdictError& e) {
      check(std::string(e.what()).find("Missing key(s) in state_dict: \"layer.scale\"") !=
                std::string::npos,
            "PyTorch's message names the missing key");
    }
    if (rank == 0) {
      std::printf("consumer: shardload %s (NCCL %d) saved and loaded %lld bytes on %d rank(s)\n",
                  SHARDLOAD_VERSION_STRING, SHARDLOAD_WITH_NCCL,
                  static_cast<long long>(r.bytes_read_total), ranks);
    }
  } catch (const shardload::Error& e) {
    std::fprintf(stderr, "rank %d: %s\n", rank, e.what());
    failures = 1;
  }
  int any = 0;
  MPI_Allreduce(&failures, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return any ? 1 : 0;
}
