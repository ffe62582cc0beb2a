// The GPU path (label `gpu`): loads into CUDA tensors, bit-exact against a CPU load of the same
// checkpoint; NCCL where every rank has a GPU of its own, MPI plus host-to-device copies where
// ranks share one; saves from CUDA tensors; corrupt bytes never reach a GPU. On a machine without
// a CUDA device every test reports itself skipped, with the reason.
#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <hdf5.h>

#include <cstdlib>
#include <fstream>

#include "../mpi/mpi_test_util.h"
#include "io/shard_file.h"
#include "loader/shardload.h"

namespace shardload::testing {
namespace {

int gpu_count() {
  return at::detail::getCUDAHooks().hasCUDA() ? at::detail::getCUDAHooks().deviceCount() : 0;
}

#define SKIP_WITHOUT_GPU()                                                                    \
  if (gpu_count() == 0) {                                                                     \
    GTEST_SKIP() << "no CUDA device is visible on this machine: the gpu tests need one (run " \
                    "scripts/gpu_check.sh on a machine with an NVIDIA GPU)";                  \
  }

/// This rank's device: its local rank's, as the command line picks it.
at::Device my_device() {
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
  return at::Device(at::kCUDA, static_cast<int8_t>((local ? std::atoi(local) : 0) % gpu_count()));
}

TensorList sample_state() {
  return {{"big.weight", make_tensor(1, at::kFloat, {1024, 512})},  // 2 MiB: direct landing
          {"big.bf16", make_tensor(2, at::kBFloat16, {700, 900})},
          {"small.bias", make_tensor(3, at::kFloat, {33})},
          {"small.index", make_tensor(4, at::kLong, {5, 3})},
          {"mask", make_tensor(5, at::kBool, {17})},
          {"step", make_tensor(6, at::kLong, {})}};
}

Partition zeros_like_on(const TensorList& full, const std::vector<SplitRule>& rules,
                        at::Device device) {
  TensorList zeros;
  for (const auto& t : full) zeros.push_back({t.key, at::zeros_like(t.tensor).to(device)});
  return Partition::from_global(zeros, rules, world_rank(), world_size());
}

void expect_same(const Partition& cuda, const Partition& cpu) {
  ASSERT_EQ(cuda.entries().size(), cpu.entries().size());
  for (size_t i = 0; i < cpu.entries().size(); ++i) {
    EXPECT_TRUE(cuda.entries()[i].tensor.is_cuda()) << cpu.entries()[i].key;
    EXPECT_TRUE(same_bits(cuda.entries()[i].tensor.cpu(), cpu.entries()[i].tensor))
        << cpu.entries()[i].key;
  }
}

TEST(Gpu, LoadIntoCudaTensorsIsBitExactWithACpuLoad) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-load");
  const TensorList full = sample_state();
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  for (const auto& rules : {std::vector<SplitRule>{}, std::vector<SplitRule>{{"^big\\.", 0, {}}},
                            std::vector<SplitRule>{{"^big\\.weight$", 1, {}}}}) {
    Partition cpu = zeros_like_on(full, rules, at::kCPU);
    Partition cuda = zeros_like_on(full, rules, my_device());
    load(cpu, ckpt, MPI_COMM_WORLD);
    LoadResult r = load(cuda, ckpt, MPI_COMM_WORLD);
    expect_same(cuda, cpu);
    // NCCL when every rank has a GPU of its own; on a shared GPU, MPI and the reason.
    if (world_size() > 1 && world_size() <= gpu_count()) {
      EXPECT_EQ(r.transport, "nccl") << r.transport_reason;
    } else if (world_size() > gpu_count()) {
      EXPECT_EQ(r.transport, "mpi");
      EXPECT_NE(r.transport_reason.find("share one GPU"), std::string::npos) << r.transport_reason;
    }
    EXPECT_TRUE(same_on_all_ranks(r.transport));
  }
}

TEST(Gpu, DtypeConversionHappensOnTheDevice) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-convert");
  const TensorList full = sample_state();
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  TensorList as_half;
  for (const auto& t : full) {
    at::ScalarType to = at::isFloatingType(t.tensor.scalar_type()) ? at::kHalf : at::kInt;
    as_half.push_back({t.key, at::zeros(t.tensor.sizes(), at::TensorOptions().dtype(to))});
  }
  Partition cpu = zeros_like_on(as_half, {}, at::kCPU);
  Partition cuda = zeros_like_on(as_half, {}, my_device());
  load(cpu, ckpt, MPI_COMM_WORLD);
  LoadResult r = load(cuda, ckpt, MPI_COMM_WORLD);
  EXPECT_FALSE(r.dtype_conversions.empty());
  expect_same(cuda, cpu);
}

TEST(Gpu, AModelWithCpuAndCudaTensorsLoads) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-mixed");
  const TensorList full = sample_state();
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  TensorList mixed;
  for (size_t i = 0; i < full.size(); ++i) {
    at::Tensor z = at::zeros_like(full[i].tensor);
    mixed.push_back({full[i].key, i % 2 ? z.to(my_device()) : z});
  }
  Partition p = Partition::from_global(mixed, {}, world_rank(), world_size());
  load(p, ckpt, MPI_COMM_WORLD);
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_TRUE(same_bits(p.entries()[i].tensor.cpu(), full[i].tensor)) << full[i].key;
  }
}

TEST(Gpu, SaveFromCudaTensors) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-save");
  const TensorList full = sample_state();
  TensorList on_gpu;
  for (const auto& t : full) on_gpu.push_back({t.key, t.tensor.to(my_device())});
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(on_gpu, {{"^big\\.", 0, {}}}, world_rank(), world_size()), ckpt,
       MPI_COMM_WORLD);
  Partition back = zeros_like_on(full, {}, at::kCPU);
  load(back, ckpt, MPI_COMM_WORLD);
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_TRUE(same_bits(back.entries()[i].tensor, full[i].tensor)) << full[i].key;
  }
}

TEST(Gpu, CorruptBytesNeverReachTheGpu) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-corrupt");
  const TensorList full = {{"w", make_tensor(9, at::kFloat, {512, 1024})}};
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  if (world_rank() == 0) {
    // Flip one byte in the middle of the chunk's data.
    const std::string shard = ckpt + "/" + shard_file_name(0, world_size());
    hid_t f = H5Fopen(shard.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    hid_t ds = H5Dopen2(f, "/data/0", H5P_DEFAULT);
    ASSERT_GE(ds, 0);
    haddr_t offset = H5Dget_offset(ds);
    H5Dclose(ds);
    H5Fclose(f);
    std::fstream io(shard, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(offset + 1000000));
    char c = 0x5a;
    io.write(&c, 1);
  }
  barrier();
  Partition cuda = zeros_like_on(full, {}, my_device());
  std::string error = error_of<Error>([&] { load(cuda, ckpt, MPI_COMM_WORLD); });
  EXPECT_NE(error.find("'w'"), std::string::npos) << error;
  EXPECT_TRUE(same_on_all_ranks(error));
  EXPECT_TRUE(same_bits(cuda.entries()[0].tensor.cpu(), at::zeros_like(full[0].tensor)));
}

}  // namespace
}  // namespace shardload::testing
