// The choice between NCCL and MPI for a load's CUDA destinations: a pure function of what every
// rank reports, tested here without a GPU.
#include <gtest/gtest.h>

#include "transport/transport_choice.h"

namespace shardload {
namespace {

RankDevice gpu_rank(int device, const std::string& id, bool wants = true) {
  RankDevice d;
  d.wants_cuda = wants;
  d.nccl_built = true;
  d.device = device;
  d.gpu_id = id;
  return d;
}

TEST(TransportChoice, NcclWhenEveryRankHasItsOwnGpu) {
  TransportChoice c = choose_transport(
      {gpu_rank(0, "h/0"), gpu_rank(1, "h/1"), gpu_rank(0, "g/0", /*wants=*/false)});
  EXPECT_TRUE(c.nccl) << c.reason;
  EXPECT_EQ(c.reason, "");
}

TEST(TransportChoice, MpiWithoutCudaDestinations) {
  TransportChoice c = choose_transport({gpu_rank(0, "h/0", false), gpu_rank(1, "h/1", false)});
  EXPECT_FALSE(c.nccl);
  EXPECT_EQ(c.reason, "no destination tensor is in CUDA memory");
}

TEST(TransportChoice, MpiWhenTwoRanksShareAGpu) {
  TransportChoice c = choose_transport({gpu_rank(0, "h/0"), gpu_rank(0, "h/0")});
  EXPECT_FALSE(c.nccl);
  EXPECT_EQ(c.reason, "ranks 0 and 1 share one GPU (h/0), which NCCL refuses");
  // The same device number on two hosts is two GPUs.
  EXPECT_TRUE(choose_transport({gpu_rank(0, "a/0"), gpu_rank(0, "b/0")}).nccl);
}

TEST(TransportChoice, MpiWhenARankCannotJoin) {
  RankDevice no_gpu = gpu_rank(-1, "", false);
  TransportChoice c = choose_transport({gpu_rank(0, "h/0"), no_gpu});
  EXPECT_FALSE(c.nccl);
  EXPECT_EQ(c.reason, "rank 1 has no visible GPU");

  RankDevice no_nccl = gpu_rank(1, "h/1");
  no_nccl.nccl_built = false;
  c = choose_transport({gpu_rank(0, "h/0"), no_nccl});
  EXPECT_FALSE(c.nccl);
  EXPECT_EQ(c.reason, "rank 1 runs a build without NCCL");

  RankDevice mixed = gpu_rank(1, "h/1");
  mixed.mixed_devices = true;
  c = choose_transport({mixed, gpu_rank(0, "h/0")});
  EXPECT_FALSE(c.nccl);
  EXPECT_EQ(c.reason, "rank 0's tensors live on more than one GPU");
}

TEST(TransportChoice, ReportsSurviveTheirWireForm) {
  RankDevice d = gpu_rank(3, "node-7/0000:1b:00.0");
  d.mixed_devices = true;
  RankDevice back = deserialize_rank_device(serialize_rank_device(d));
  EXPECT_EQ(back.wants_cuda, d.wants_cuda);
  EXPECT_EQ(back.nccl_built, d.nccl_built);
  EXPECT_EQ(back.device, 3);
  EXPECT_EQ(back.mixed_devices, true);
  EXPECT_EQ(back.gpu_id, d.gpu_id);
  EXPECT_ANY_THROW(deserialize_rank_device("x"));
}

}  // namespace
}  // namespace shardload
