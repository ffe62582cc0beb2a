// The GPU path (label `gpu`), through the public API only: loads into CUDA tensors bit-exact
// against CPU loads of the same checkpoint, at 1, 2 and 4 ranks. tests/CMakeLists.txt gives each
// rank its own NCCL_HOSTID, so that ranks sharing one GPU are distinct GPUs to NCCL and every
// multi-rank load goes through a real NCCL communicator: the tests expect transport "nccl"
// whenever there are several ranks. Every load has a 60 s timeout, so that a hang is a named
// error, not the test's limit. On a machine without a CUDA device every test reports itself
// skipped, with the reason (ctest then reports the whole run skipped, never passed).
#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <hdf5.h>

#include <cstdlib>
#include <optional>

#include "../mpi/mpi_test_util.h"
#include "io/h5/shard_file.h"
#include "loader/shardload.h"

namespace shardload::testing {
namespace {

int gpu_count() {
  return at::detail::getCUDAHooks().hasCUDA() ? at::detail::getCUDAHooks().deviceCount() : 0;
}

/// SHARDLOAD_GPU_TESTS_ON_CPU=1 (by hand, never in ctest): the same tests on CPU tensors and the
/// MPI route, to check the tests themselves on a machine without a GPU.
bool on_cpu() {
  static const bool yes = std::getenv("SHARDLOAD_GPU_TESTS_ON_CPU") != nullptr;
  return yes;
}

#define SKIP_WITHOUT_GPU()                                                                    \
  if (!on_cpu() && gpu_count() == 0) {                                                        \
    GTEST_SKIP() << "no CUDA device is visible on this machine: the gpu tests need one (run " \
                    "scripts/gpu_check.sh on a machine with an NVIDIA GPU)";                  \
  }

/// This rank's node-local rank, from MPI (whatever launched the job).
int local_rank() {
  static const int local = [] {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world_rank(), MPI_INFO_NULL, &node);
    int r = 0;
    MPI_Comm_rank(node, &r);
    MPI_Comm_free(&node);
    return r;
  }();
  return local;
}

/// This rank's device, as the library and the command line choose it: local rank % devices.
at::Device my_device() {
  if (on_cpu()) return at::Device(at::kCPU);
  return at::Device(at::kCUDA, static_cast<int8_t>(local_rank() % gpu_count()));
}

/// Every load of these tests: a hang becomes a named CommError within a minute.
LoadOptions options(LoadOptions o = {}) {
  o.timeout_seconds = 60;
  return o;
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
  TensorList zeros;  // filled on the device, on the current stream
  for (const auto& t : full) {
    zeros.push_back({t.key, at::zeros(t.tensor.sizes(), t.tensor.options().device(device))});
  }
  return Partition::from_global(zeros, rules, world_rank(), world_size());
}

void expect_same(const Partition& cuda, const Partition& cpu) {
  ASSERT_EQ(cuda.entries().size(), cpu.entries().size());
  for (size_t i = 0; i < cpu.entries().size(); ++i) {
    EXPECT_EQ(cuda.entries()[i].tensor.device(), my_device()) << cpu.entries()[i].key;
    EXPECT_TRUE(same_bits(cuda.entries()[i].tensor.cpu(), cpu.entries()[i].tensor))
        << cpu.entries()[i].key;
  }
}

/// CUDA destinations on several ranks go by NCCL: each rank has a GPU of its own to NCCL (its
/// own NCCL_HOSTID where they share one).
void expect_nccl(const LoadResult& r) {
  if (world_size() > 1) EXPECT_EQ(r.transport, on_cpu() ? "mpi" : "nccl") << r.transport_reason;
  EXPECT_TRUE(same_on_all_ranks(r.transport));
}

std::string save_global(const TensorList& full, const std::vector<SplitRule>& rules,
                        const std::string& path) {
  save(Partition::from_global(full, rules, world_rank(), world_size()), path, MPI_COMM_WORLD);
  return path;
}

/// Flips one byte in the middle of the middle chunk data set (/data/N) of the first shard file
/// that has any (rank 0 writes; all ranks wait).
void corrupt_a_chunk(const std::string& ckpt) {
  bool done = true;
  if (world_rank() == 0) {
    done = false;
    for (int shard = 0; shard < world_size() && !done; ++shard) {
      const std::string file = ckpt + "/" + shard_file_name(shard, world_size());
      hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
      if (f < 0) continue;
      H5G_info_t info{};
      if (H5Lexists(f, "/data", H5P_DEFAULT) > 0)
        H5Gget_info_by_name(f, "/data", &info, H5P_DEFAULT);
      haddr_t offset = HADDR_UNDEF;
      hsize_t size = 0;
      if (info.nlinks > 0) {
        const std::string name = "/data/" + std::to_string(info.nlinks / 2);
        hid_t ds = H5Dopen2(f, name.c_str(), H5P_DEFAULT);
        if (ds >= 0) {
          offset = H5Dget_offset(ds);
          size = H5Dget_storage_size(ds);
          H5Dclose(ds);
        }
      }
      H5Fclose(f);
      if (offset == HADDR_UNDEF || size == 0) continue;
      done = flip_byte(file, offset + size / 2);
    }
  }
  ASSERT_TRUE(all_ranks(done)) << "found no chunk data set to corrupt in " << ckpt;
}

TEST(Gpu, ReplicatedAndSplitLoadsAreBitExactWithCpuLoads) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-load");
  const TensorList full = sample_state();
  const std::string ckpt = save_global(full, {}, dir.path + "/ckpt");
  for (const auto& rules : {std::vector<SplitRule>{}, std::vector<SplitRule>{{"^big\\.", 0, {}}},
                            std::vector<SplitRule>{{"^big\\.weight$", 1, {}}}}) {
    Partition cpu = zeros_like_on(full, rules, at::kCPU);
    Partition cuda = zeros_like_on(full, rules, my_device());
    const LoadResult on_host = load(cpu, ckpt, MPI_COMM_WORLD, options());
    LoadResult r = load(cuda, ckpt, MPI_COMM_WORLD, options());
    expect_same(cuda, cpu);
    expect_nccl(r);
    // The default message size follows where the tensors are.
    EXPECT_EQ(on_host.message_bytes, kHostMessageBytes);
    EXPECT_EQ(r.message_bytes, on_cpu() ? kHostMessageBytes : kDeviceMessageBytes);
  }
}

TEST(Gpu, DtypeConversionHappensOnTheDevice) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-convert");
  const TensorList full = sample_state();
  const std::string ckpt = save_global(full, {}, dir.path + "/ckpt");
  TensorList as_half;
  for (const auto& t : full) {
    at::ScalarType to = at::isFloatingType(t.tensor.scalar_type()) ? at::kHalf : at::kInt;
    as_half.push_back({t.key, at::zeros(t.tensor.sizes(), at::TensorOptions().dtype(to))});
  }
  Partition cpu = zeros_like_on(as_half, {}, at::kCPU);
  Partition cuda = zeros_like_on(as_half, {}, my_device());
  load(cpu, ckpt, MPI_COMM_WORLD, options());
  LoadResult r = load(cuda, ckpt, MPI_COMM_WORLD, options());
  EXPECT_FALSE(r.dtype_conversions.empty());
  expect_same(cuda, cpu);
}

TEST(Gpu, AModelWithCpuAndCudaTensorsLoads) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-mixed");
  const TensorList full = sample_state();
  const std::string ckpt = save_global(full, {}, dir.path + "/ckpt");
  TensorList mixed;
  for (size_t i = 0; i < full.size(); ++i) {
    at::Tensor z = at::zeros_like(full[i].tensor);
    mixed.push_back({full[i].key, i % 2 ? z.to(my_device()) : z});
  }
  Partition p = Partition::from_global(mixed, {}, world_rank(), world_size());
  load(p, ckpt, MPI_COMM_WORLD, options());
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_TRUE(same_bits(p.entries()[i].tensor.cpu(), full[i].tensor)) << full[i].key;
  }
}

/// Hundreds of tensors of every dtype and odd sizes (0-d, empty, a few elements, larger than a
/// message), a third of them split along dim 0, moved in 4 KiB messages: many pieces per
/// message at unaligned sizes, many messages per tensor.
TEST(Gpu, StressHundredsOfOddSizedMixedDtypeTensorsIn4KiBMessages) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-stress");
  const std::vector<at::ScalarType> dtypes = all_dtypes();
  TensorList full;
  for (int64_t i = 0; i < 320; ++i) {
    const int64_t ndim = i % 4;
    Shape shape;
    for (int64_t d = 0; d < ndim; ++d) shape.push_back((i * 7 + d * 13) % 23 + (d == 0 ? 0 : 1));
    if (i % 37 == 5) shape = {1531 + i};  // larger than one message in every dtype
    const bool split = ndim >= 1 && i % 3 == 0;
    const std::string key = (split ? "split." : "rep.") + std::to_string(i);
    full.push_back(
        {key, make_tensor(100 + i, dtypes[static_cast<size_t>(i) % dtypes.size()], shape)});
  }
  const std::vector<SplitRule> rules = {{"^split\\.", 0, {}}};
  const std::string ckpt = save_global(full, rules, dir.path + "/ckpt");
  LoadOptions small = options();
  small.message_bytes = 4096;
  Partition cpu = zeros_like_on(full, rules, at::kCPU);
  Partition cuda = zeros_like_on(full, rules, my_device());
  load(cpu, ckpt, MPI_COMM_WORLD, small);
  LoadResult r = load(cuda, ckpt, MPI_COMM_WORLD, small);
  expect_same(cuda, cpu);
  expect_nccl(r);
  // And the CPU load itself is the checkpoint's content.
  Partition expected = Partition::from_global(full, rules, world_rank(), world_size());
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_TRUE(same_bits(cpu.entries()[i].tensor, expected.entries()[i].tensor)) << full[i].key;
  }
}

/// Replicas of split groups (2 replicas x 2-way split at 4 ranks; a 2-way split at 2 ranks): a
/// chunk goes to a subset of the ranks, not to all.
TEST(Gpu, SubsetMessagesToReplicasOfASplitGroup) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-subset");
  const int rank = world_rank(), tp = world_size() % 2 == 0 ? 2 : 1, t = rank % tp;
  std::vector<int> group;
  for (int m = rank - t; m < rank - t + tp; ++m) group.push_back(m);
  const at::Tensor w = make_tensor(31, at::kFloat, {300, 257});
  const at::Tensor v = make_tensor(32, at::kHalf, {5, 1001});
  const at::Tensor b = make_tensor(33, at::kBFloat16, {7});
  // Rows of w and columns of v held by this rank of its group.
  const int64_t w_rows = tp == 1 ? 300 : (t == 0 ? 170 : 130), w_begin = t == 0 ? 0 : 170;
  const int64_t v_cols = tp == 1 ? 1001 : (t == 0 ? 500 : 501), v_begin = t == 0 ? 0 : 500;
  const at::Tensor w_mine = w.narrow(0, w_begin, w_rows), v_mine = v.narrow(1, v_begin, v_cols);

  const std::string ckpt = dir.path + "/ckpt";
  Partition saved;
  saved.add("b", b);
  saved.add_split("w", w_mine.clone(), 0, group);
  saved.add_split("v", v_mine.clone(), 1, group);
  save(saved, ckpt, MPI_COMM_WORLD);

  auto destination = [&](at::Device device) {
    Partition p;
    p.add("b", at::zeros_like(b).to(device));
    p.add_split("w", at::zeros_like(w_mine).to(device), 0, group);
    p.add_split("v", at::zeros_like(v_mine).to(device), 1, group);
    return p;
  };
  Partition cpu = destination(at::kCPU), cuda = destination(my_device());
  load(cpu, ckpt, MPI_COMM_WORLD, options());
  LoadResult r = load(cuda, ckpt, MPI_COMM_WORLD, options());
  expect_same(cuda, cpu);
  expect_nccl(r);
  EXPECT_TRUE(same_bits(cuda.entries()[0].tensor.cpu(), b));
  EXPECT_TRUE(same_bits(cuda.entries()[1].tensor.cpu(), w_mine));
  EXPECT_TRUE(same_bits(cuda.entries()[2].tensor.cpu(), v_mine));
}

/// The caller's current stream is not the default one: the load waits for the work already on
/// it (the destinations' zero fills), and work the caller enqueues on it after load() returns
/// sees the loaded bytes without any synchronisation; the current stream is left as it was.
TEST(Gpu, LoadWithANonDefaultCurrentStream) {
  SKIP_WITHOUT_GPU();
  if (on_cpu()) GTEST_SKIP() << "needs CUDA streams";
  SharedDir dir("gpu-stream");
  TensorList full = sample_state();
  full.push_back({"large", at::arange(int64_t{16} << 20, at::TensorOptions().dtype(at::kFloat))});
  const std::vector<SplitRule> rules = {{"^big\\.", 0, {}}};
  const std::string ckpt = save_global(full, rules, dir.path + "/ckpt");
  Partition cpu = zeros_like_on(full, rules, at::kCPU);
  load(cpu, ckpt, MPI_COMM_WORLD, options());

  const at::Device device = my_device();
  c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(false, device.index());
  ASSERT_NE(stream, c10::cuda::getDefaultCUDAStream(device.index()));
  c10::cuda::CUDAStreamGuard guard(stream);
  Partition cuda = zeros_like_on(full, rules, device);  // zero fills enqueued on `stream`
  LoadResult r = load(cuda, ckpt, MPI_COMM_WORLD, options());
  EXPECT_EQ(c10::cuda::getCurrentCUDAStream(device.index()), stream);
  std::vector<at::Tensor> after;  // enqueued on `stream`, right after load() returned
  for (const auto& e : cuda.entries()) after.push_back(e.tensor.clone());
  stream.synchronize();
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_TRUE(same_bits(after[i].cpu(), cpu.entries()[i].tensor)) << cpu.entries()[i].key;
  }
  expect_nccl(r);
}

/// A kernel that writes a destination is still running when load() is called: the load lands
/// after it (the bytes of the checkpoint, not the kernel's), as any op on the caller's stream
/// would.
TEST(Gpu, ADestinationWithAKernelStillPending) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-pending");
  // 256 MiB of float: each pass takes a while on a GPU (the CPU mode only checks the test).
  const int64_t n = on_cpu() ? int64_t{1} << 16 : int64_t{64} << 20;
  const TensorList full = {
      {"pending", at::arange(n, at::TensorOptions().dtype(at::kFloat)).remainder(1000)},
      {"split", make_tensor(41, at::kFloat, {1024, 257})}};
  const std::vector<SplitRule> rules = {{"^split$", 0, {}}};
  const std::string ckpt = save_global(full, rules, dir.path + "/ckpt");
  Partition cuda = zeros_like_on(full, rules, my_device());
  for (int k = 0; k < (on_cpu() ? 10 : 1500); ++k) {
    for (auto& e : cuda.entries()) e.tensor.add_(1);  // queued; still running when load() starts
  }
  LoadResult r = load(cuda, ckpt, MPI_COMM_WORLD, options());
  const Partition expected = Partition::from_global(full, rules, world_rank(), world_size());
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_TRUE(same_bits(cuda.entries()[i].tensor.cpu(), expected.entries()[i].tensor))
        << full[i].key;
  }
  expect_nccl(r);
}

/// A load that fails in the middle of the transfer (a corrupt chunk, found after many messages
/// went out) leaves nothing behind that stops the next one: the next load into the same CUDA
/// tensors works and is bit-exact, twice over.
TEST(Gpu, ALoadAfterAnAbortedOneWorks) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-abort");
  TensorList full;
  for (int i = 0; i < 16; ++i) {  // 1 MiB each: one /data/N data set per chunk (not packed)
    full.push_back({"t." + std::to_string(i), make_tensor(200 + i, at::kFloat, {512, 512})});
  }
  const std::string good = save_global(full, {}, dir.path + "/good");
  const std::string bad = save_global(full, {}, dir.path + "/bad");
  ASSERT_NO_FATAL_FAILURE(corrupt_a_chunk(bad));
  LoadOptions small = options();
  small.message_bytes = 64 << 10;
  Partition cuda = zeros_like_on(full, {}, my_device());
  for (int round = 0; round < 2; ++round) {
    const std::string error = error_of<Error>([&] { load(cuda, bad, MPI_COMM_WORLD, small); });
    EXPECT_NE(error.find("checksum mismatch"), std::string::npos) << error;
    EXPECT_TRUE(same_on_all_ranks(error));
    LoadResult r = load(cuda, good, MPI_COMM_WORLD, small);
    for (size_t i = 0; i < full.size(); ++i) {
      EXPECT_TRUE(same_bits(cuda.entries()[i].tensor.cpu(), full[i].tensor)) << full[i].key;
    }
    expect_nccl(r);
  }
}

/// Saves from CUDA tensors, one of them written by a kernel still queued when save() is called.
TEST(Gpu, SaveFromCudaTensors) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-save");
  const TensorList full = sample_state();
  TensorList on_gpu;
  for (const auto& t : full) {
    at::Tensor g = at::zeros_like(t.tensor).to(my_device());
    g.copy_(t.tensor.to(my_device()));
    on_gpu.push_back({t.key, g});
  }
  const std::string ckpt = dir.path + "/ckpt";
  const std::vector<SplitRule> rules = {{"^big\\.", 0, {}}};
  save(Partition::from_global(on_gpu, rules, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  Partition cpu = zeros_like_on(full, {}, at::kCPU);
  load(cpu, ckpt, MPI_COMM_WORLD, options());
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_TRUE(same_bits(cpu.entries()[i].tensor, full[i].tensor)) << full[i].key;
  }
  // And back into CUDA tensors, split differently than saved.
  Partition cuda = zeros_like_on(full, {{"^big\\.weight$", 1, {}}}, my_device());
  Partition cpu_split = zeros_like_on(full, {{"^big\\.weight$", 1, {}}}, at::kCPU);
  load(cpu_split, ckpt, MPI_COMM_WORLD, options());
  expect_nccl(load(cuda, ckpt, MPI_COMM_WORLD, options()));
  expect_same(cuda, cpu_split);
}

/// save_async from CUDA tensors written by kernels still queued on a non-default current stream
/// (the snapshot is ordered after them, on a stream of its own), changed on that stream right
/// after save_async returns (the checkpoint is the state at the call), and a large non-contiguous
/// CUDA tensor saved synchronously through staging_bytes pieces.
TEST(Gpu, AsyncSaveFromCudaTensorsWithPendingKernels) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-async");
  const int64_t n = on_cpu() ? int64_t{1} << 16 : int64_t{32} << 20;
  const TensorList full = {
      {"pending", at::arange(n, at::TensorOptions().dtype(at::kFloat)).remainder(1000)},
      {"split", make_tensor(51, at::kFloat, {1024, 257})},
      {"wide", make_tensor(52, at::kBFloat16, {300, 2048})}};
  const std::vector<SplitRule> rules = {{"^split$", 0, {}}};
  const at::Device device = my_device();
  std::optional<c10::cuda::CUDAStreamGuard> guard;
  if (!on_cpu()) guard.emplace(c10::cuda::getStreamFromPool(false, device.index()));
  Partition gpu = zeros_like_on(full, rules, device);
  const Partition expected = Partition::from_global(full, rules, world_rank(), world_size());
  for (int k = 0; k < (on_cpu() ? 3 : 200); ++k) {
    for (auto& e : gpu.entries()) e.tensor.add_(1);  // queued on the current stream
  }
  for (size_t i = 0; i < full.size(); ++i) {
    gpu.entries()[i].tensor.copy_(expected.entries()[i].tensor.to(device));
  }
  SaveOptions o;
  o.timeout_seconds = 60;
  SaveHandle h = save_async(gpu, dir.path + "/async", MPI_COMM_WORLD, o);
  for (auto& e : gpu.entries()) e.tensor.fill_(-7);  // training goes on
  EXPECT_TRUE(h.wait().asynchronous);
  EXPECT_GT(snapshot_memory_bytes(), 0);
  Partition cpu = zeros_like_on(full, rules, at::kCPU);
  load(cpu, dir.path + "/async", MPI_COMM_WORLD, options());
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_TRUE(same_bits(cpu.entries()[i].tensor, expected.entries()[i].tensor)) << full[i].key;
  }

  // A non-contiguous CUDA tensor through 256 KiB of staging at a time.
  at::Tensor wide_t = full[2].tensor.to(device).t();
  Partition p;
  p.add("wide_t", wide_t);
  o.staging_bytes = 256 << 10;
  const SaveResult r = save(p, dir.path + "/pieces", MPI_COMM_WORLD, o);
  int64_t chunks = 0;
  MPI_Allreduce(&r.chunks_written, &chunks, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  EXPECT_GE(chunks, int64_t{300} * 2048 * 2 / (256 << 10));  // the pieces, 256 KiB at most
  at::Tensor got = at::zeros({2048, 300}, at::kBFloat16);
  Partition q;
  q.add("wide_t", got);
  load(q, dir.path + "/pieces", MPI_COMM_WORLD, options());
  EXPECT_TRUE(same_bits(got, full[2].tensor.t().contiguous()));
}

TEST(Gpu, CorruptBytesNeverReachTheGpu) {
  SKIP_WITHOUT_GPU();
  SharedDir dir("gpu-corrupt");
  const TensorList full = {{"w", make_tensor(9, at::kFloat, {512, 1024})}};
  const std::string ckpt = save_global(full, {}, dir.path + "/ckpt");
  ASSERT_NO_FATAL_FAILURE(corrupt_a_chunk(ckpt));
  Partition cuda = zeros_like_on(full, {}, my_device());
  std::string error = error_of<Error>([&] { load(cuda, ckpt, MPI_COMM_WORLD, options()); });
  EXPECT_NE(error.find("'w'"), std::string::npos) << error;
  EXPECT_TRUE(same_on_all_ranks(error));
  EXPECT_TRUE(same_bits(cuda.entries()[0].tensor.cpu(), at::zeros_like(full[0].tensor)));
}

}  // namespace
}  // namespace shardload::testing
