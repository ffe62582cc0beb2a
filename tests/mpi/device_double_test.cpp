// The device route of the transfer, run through the strict CPU double of the device contract
// (device_double.h) at every rank count: bit-exact against the MPI route, with odd sizes, 0-d
// tensors, every dtype, tiny messages, subset messages, resharding, and failures on one rank that
// every rank reports at once.
#include "tests/mpi/device_double.h"

#include <chrono>

#include "loader/shardload.h"
#include "tests/mpi/mpi_test_util.h"
#include "transport/communicator.h"

namespace shardload::testing {
namespace {

TensorList ordinary_state() {
  return {{"big.weight", make_tensor(1, at::kFloat, {512, 520})},  // > 1 MiB: direct landing
          {"big.bf16", make_tensor(2, at::kBFloat16, {300, 91})},
          {"odd.bias", make_tensor(3, at::kFloat, {33})},  // 132 bytes: the next piece moves
          {"odd.half", make_tensor(4, at::kHalf, {7, 3})},
          {"index", make_tensor(5, at::kLong, {5, 3})},
          {"mask", make_tensor(6, at::kBool, {17})},
          {"bytes", make_tensor(7, at::kByte, {3, 5})},
          {"step", make_tensor(8, at::kLong, {})},  // 0-d
          {"scale", make_tensor(9, at::kDouble, {})},
          {"empty", make_tensor(10, at::kFloat, {0, 4})}};
}

/// Hundreds of odd-sized tensors of every dtype.
TensorList many_odd_tensors() {
  TensorList out;
  const auto dtypes = all_dtypes();
  for (int i = 0; i < 240; ++i) {
    const at::ScalarType type = dtypes[static_cast<size_t>(i) % dtypes.size()];
    const Shape shape = i % 7 == 0 ? Shape{} : Shape{1 + (i * 37) % 61, 1 + (i * 13) % 9};
    // 0-d tensors are "s<i>" (the split rules below match "t<i>" only).
    out.push_back(
        {(shape.empty() ? "s" : "t") + std::to_string(i), make_tensor(100 + i, type, shape)});
  }
  return out;
}

Partition zeros_in(const TensorList& full, const std::vector<SplitRule>& rules) {
  TensorList zeros;
  for (const auto& t : full) zeros.push_back({t.key, at::zeros_like(t.tensor)});
  return Partition::from_global(zeros, rules, world_rank(), world_size());
}

void expect_same(const Partition& a, const Partition& b) {
  ASSERT_EQ(a.entries().size(), b.entries().size());
  for (size_t i = 0; i < a.entries().size(); ++i) {
    EXPECT_TRUE(same_bits(a.entries()[i].tensor, b.entries()[i].tensor))
        << a.entries()[i].key << " on rank " << world_rank();
  }
}

/// Loads `ckpt` into `rules` twice, by the MPI route and through the double; both must be
/// bit-exact with each other (and the double must have carried the bytes).
void expect_device_route_matches(const TensorList& full, const std::string& ckpt,
                                 const std::vector<SplitRule>& rules, LoadOptions options = {}) {
  options.timeout_seconds = 60;
  Partition by_mpi = zeros_in(full, rules);
  load(by_mpi, ckpt, MPI_COMM_WORLD, options);
  Partition by_device = zeros_in(full, rules);
  LoadResult r;
  {
    ScopedDeviceDouble device;
    r = load(by_device, ckpt, MPI_COMM_WORLD, options);
    EXPECT_EQ(device->reports(), 1);
    if (world_size() > 1) EXPECT_GT(device->groups(), 0);
  }
  EXPECT_EQ(r.transport, "double") << r.transport_reason;
  EXPECT_TRUE(same_on_all_ranks(r.transport));
  expect_same(by_device, by_mpi);
}

TEST(DeviceDouble, LoadsAreBitExactWithTheMpiRoute) {
  SharedDir dir("double-load");
  const TensorList full = ordinary_state();
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  for (const auto& rules :
       {std::vector<SplitRule>{}, std::vector<SplitRule>{{"^big\\.", 0, {}}},
        std::vector<SplitRule>{{"^big\\.weight$", 1, {}}, {"^odd\\.half$", 0, {}}}}) {
    expect_device_route_matches(full, ckpt, rules);
  }
}

TEST(DeviceDouble, EveryPieceInAMessageOfItsOwnStraightIntoItsTensor) {
  // 16-byte messages: every piece alone in its message, so 0-d and odd-sized tensors take the
  // direct route (the bytes go straight into the tensor, addressed by data_ptr, never through a
  // dtype view).
  SharedDir dir("double-direct");
  const TensorList full = {{"step", make_tensor(51, at::kLong, {})},
                           {"scale", make_tensor(52, at::kDouble, {})},
                           {"flag", make_tensor(53, at::kBool, {})},
                           {"odd", make_tensor(54, at::kHalf, {3})},
                           {"w", make_tensor(55, at::kFloat, {6, 5})}};
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  LoadOptions tiny;
  tiny.message_bytes = 16;
  tiny.staging_bytes = 256;
  expect_device_route_matches(full, ckpt, {}, tiny);
  expect_device_route_matches(full, ckpt, {{"^w$", 1, {}}}, tiny);
}

TEST(DeviceDouble, HundredsOfOddTensorsInFourKibMessagesAcrossSplitsAndReshards) {
  SharedDir dir("double-stress");
  const TensorList full = many_odd_tensors();
  const std::string ckpt = dir.path + "/ckpt";
  // Saved split along dim 0, loaded split along dim 1 and replicated: pieces of every shape.
  save(Partition::from_global(full, {{"^t[0-9]*[02468]$", 0, {}}}, world_rank(), world_size()),
       ckpt, MPI_COMM_WORLD);
  LoadOptions small;
  small.message_bytes = 4096;
  small.staging_bytes = 64 << 10;  // groups of 16 KiB: many groups, the ring reused often
  expect_device_route_matches(full, ckpt, {}, small);
  expect_device_route_matches(full, ckpt, {{"^t[0-9]*[13579]$", 1, {}}}, small);
}

TEST(DeviceDouble, GroupsAgreeWhenRanksHoldDifferentMessages) {
  // Rank 0 alone holds "extra" (64 KiB in 4 KiB messages: groups that only rank 0 takes part
  // in), then every rank holds the rest: the groups after them must carry the same numbers on
  // every rank, which the double checks delivery by delivery.
  SharedDir dir("double-groups");
  const at::Tensor extra = make_tensor(61, at::kFloat, {128, 128});
  const TensorList shared = {{"a", make_tensor(62, at::kFloat, {40, 30})},
                             {"b", make_tensor(63, at::kBFloat16, {7, 300})}};
  auto partition = [&](bool zeros) {
    Partition p;
    if (world_rank() == 0) p.add("extra", zeros ? at::zeros_like(extra) : extra);
    for (const auto& t : shared) p.add(t.key, zeros ? at::zeros_like(t.tensor) : t.tensor);
    return p;
  };
  const std::string ckpt = dir.path + "/ckpt";
  save(partition(false), ckpt, MPI_COMM_WORLD);
  LoadOptions options;
  options.timeout_seconds = 60;
  options.message_bytes = 4096;
  options.staging_bytes = 64 << 10;
  Partition target = partition(true);
  {
    ScopedDeviceDouble device;
    EXPECT_EQ(load(target, ckpt, MPI_COMM_WORLD, options).transport, "double");
  }
  expect_same(target, partition(false));
}

TEST(DeviceDouble, SubsetMessagesBetweenReplicasOfASplit) {
  if (world_size() != 4) GTEST_SKIP() << "2 replicas x 2-way split needs 4 ranks";
  SharedDir dir("double-subset");
  const at::Tensor w = make_tensor(31, at::kFloat, {64, 48});
  const at::Tensor b = make_tensor(32, at::kBFloat16, {10});
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global({{"w", w}, {"b", b}}, {}, world_rank(), 4), ckpt, MPI_COMM_WORLD);
  const int half = world_rank() / 2, pos = world_rank() % 2;
  const std::vector<int> group = half == 0 ? std::vector<int>{0, 1} : std::vector<int>{2, 3};
  auto target = [&] {
    Partition p;
    p.add_split("w", at::zeros({32, 48}), 0, group);
    p.add("b", at::zeros({10}, at::kBFloat16));
    return p;
  };
  Partition by_device = target();
  LoadOptions options;
  options.timeout_seconds = 60;
  options.message_bytes = 1024;
  {
    ScopedDeviceDouble device;
    EXPECT_EQ(load(by_device, ckpt, MPI_COMM_WORLD, options).transport, "double");
  }
  EXPECT_TRUE(same_bits(by_device.entries()[0].tensor, w.narrow(0, 32 * pos, 32)));
  EXPECT_TRUE(same_bits(by_device.entries()[1].tensor, b));
}

TEST(DeviceDouble, ASetUpFailureOnOneRankIsTheSameErrorOnEveryRankAtOnce) {
  SharedDir dir("double-setup");
  const TensorList full = ordinary_state();
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  Partition target = zeros_in(full, {});
  LoadOptions options;
  options.timeout_seconds = 60;
  const auto t0 = std::chrono::steady_clock::now();
  std::string error;
  {
    ScopedDeviceDouble device(DoubleOptions{.fail_open_rank = world_size() - 1});
    error = error_of<CommError>([&] { load(target, ckpt, MPI_COMM_WORLD, options); });
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(error.find("injected set-up failure"), std::string::npos) << error;
  EXPECT_NE(error.find("rank " + std::to_string(world_size() - 1)), std::string::npos) << error;
  EXPECT_TRUE(same_on_all_ranks(error));
  EXPECT_LT(seconds, 10) << "the others waited for the deadline";
  // Nothing was written.
  for (const auto& e : target.entries()) EXPECT_EQ(e.tensor.count_nonzero().item<int64_t>(), 0);
}

TEST(DeviceDouble, AFailedDeliveryStopsEveryRankAtOnceAndTheNextLoadWorks) {
  SharedDir dir("double-abort");
  const TensorList full = many_odd_tensors();
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  LoadOptions options;
  options.timeout_seconds = 60;
  options.message_bytes = 4096;
  options.staging_bytes = 64 << 10;
  const auto t0 = std::chrono::steady_clock::now();
  std::string error;
  {
    ScopedDeviceDouble device(
        DoubleOptions{.fail_start_rank = world_size() - 1, .fail_start_after = 20});
    Partition target = zeros_in(full, {});
    error = error_of<CommError>([&] { load(target, ckpt, MPI_COMM_WORLD, options); });
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(error.find("injected failure of a delivery"), std::string::npos) << error;
  EXPECT_NE(error.find("failed on rank " + std::to_string(world_size() - 1)), std::string::npos)
      << error;
  EXPECT_TRUE(same_on_all_ranks(error));
  EXPECT_LT(seconds, 10) << "the others waited for the deadline";
  // The aborted load closed its group: the next one sets up and lands every byte.
  expect_device_route_matches(full, ckpt, {{"^t1", 0, {}}}, options);
}

TEST(DeviceDouble, ReceiversHoldOnlyTheStatusWordInHostStaging) {
  SharedDir dir("double-staging");
  const TensorList full = {{"w", make_tensor(41, at::kFloat, {1024, 1024})}};  // 4 MiB
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  LoadOptions options;
  options.timeout_seconds = 60;
  options.message_bytes = 256 << 10;  // 16 messages, read in turn by the ranks
  Partition target = zeros_in(full, {});
  ScopedDeviceDouble device;
  const LoadResult r = load(target, ckpt, MPI_COMM_WORLD, options);
  // What this rank reads, plus a status word (64 bytes) and up to a cache line of alignment per
  // message: never the others' 256 KiB.
  EXPECT_LE(r.staging_bytes_peak, r.bytes_read + 16 * 128) << "rank " << world_rank();
  EXPECT_TRUE(same_bits(target.entries()[0].tensor, full[0].tensor));
}

TEST(DeviceDouble, NoDeviceWorkWhenNoRankHoldsDeviceTensors) {
  SharedDir dir("double-none");
  const TensorList full = ordinary_state();
  const std::string ckpt = dir.path + "/ckpt";
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  ScopedDeviceDouble device(DoubleOptions{.claim_cpu_tensors = false});
  Partition target = zeros_in(full, {});
  const LoadResult r = load(target, ckpt, MPI_COMM_WORLD);
  EXPECT_EQ(device->reports(), 0) << "the device runtime was started for a host-only load";
  EXPECT_EQ(r.transport, "mpi");
  expect_same(target, Partition::from_global(full, {}, world_rank(), world_size()));
}

TEST(Communicator, NodeLocalRankAndSizeComeFromMpi) {
  // All ranks of these tests share one machine (and one memory): the node is the world. The
  // test command also runs this with OMPI_COMM_WORLD_LOCAL_* removed from the environment.
  Communicator comm(MPI_COMM_WORLD, 60);
  EXPECT_EQ(comm.local_size(), world_size());
  EXPECT_EQ(comm.local_rank(), world_rank());
}

}  // namespace
}  // namespace shardload::testing
