// The grouped declaration exchange: ranks with the same layout send it once, the result is what
// every rank declared (also when hashes collide), and replicas of split groups save and load.
#include "loader/declarations.h"

#include "loader/shardload.h"
#include "mpi_test_util.h"
#include "sharding/resolve.h"
#include "transport/communicator.h"

namespace shardload::testing {
namespace {

/// Tensor-parallel pairs when the world is even, single ranks otherwise.
int tp_size() { return world_size() % 2 == 0 ? 2 : 1; }

/// Rank r's declarations in a DP x TP layout: b replicated, w split over the rank's TP group
/// (rows 4 + 2 of 6), v an explicit box; the last rank of an even world also holds an extra
/// tensor (a straggler). TP positions differ only in numbers, so their layouts have the same
/// byte size (a constant hash then collides).
std::vector<Declaration> declarations_of(int r) {
  const int tp = tp_size(), t = r % tp, first = r - t;
  std::vector<int> group;
  for (int m = first; m < first + tp; ++m) group.push_back(m);
  const int64_t rows = tp == 1 ? 6 : (t == 0 ? 4 : 2);
  std::vector<Declaration> d = {
      {"b", DType::kFloat32, {3}, Declaration::Kind::kReplicated, {3}, {0}, 0, {}},
      {"w", DType::kFloat32, {rows, 4}, Declaration::Kind::kSplit, {}, {}, 0, group},
      {"v", DType::kFloat32, {1, 4}, Declaration::Kind::kShard, {tp, 4}, {t, 0}, 0, {}},
  };
  if (tp == 2 && r == world_size() - 1) {
    d.push_back({"extra", DType::kInt8, {1}, Declaration::Kind::kReplicated, {1}, {0}, 0, {}});
  }
  return d;
}

LayoutHash colliding_hash(std::string_view) { return LayoutHash{42, 42}; }

TEST(Declarations, GroupedExchangeGivesWhatEveryRankDeclared) {
  Communicator comm(MPI_COMM_WORLD);
  std::vector<std::vector<Declaration>> all;
  for (int r = 0; r < comm.size(); ++r) all.push_back(declarations_of(r));
  const DeclaredLayouts expected = DeclaredLayouts::from_ranks(all);
  // The two TP positions and the straggler, whatever the number of replicas.
  EXPECT_EQ(expected.layouts.size(),
            static_cast<size_t>(tp_size() == 1 ? 1 : (comm.size() == 2 ? 2 : 3)));
  // With the real hash, then with one under which every layout collides (the exchange must
  // notice and fall back to exact bytes).
  for (LayoutHasher hasher : {&layout_hash, &colliding_hash}) {
    const DeclaredLayouts got = exchange_declarations(comm, all[comm.rank()], hasher);
    EXPECT_EQ(got.layout_of, expected.layout_of);
    EXPECT_EQ(got.layouts, expected.layouts);
    const RankGroups needs = resolve_declarations(got);
    EXPECT_EQ(needs.of_rank(comm.rank()), resolve_declarations(expected).of_rank(comm.rank()));
  }
}

TEST(Declarations, ReplicasOfSplitGroupsSaveAndLoadBitExact) {
  SharedDir dir("declarations");
  const std::string ckpt = dir.path + "/ckpt";
  const int rank = world_rank(), tp = tp_size(), t = rank % tp, first = rank - t;
  std::vector<int> group;
  for (int m = first; m < first + tp; ++m) group.push_back(m);
  const at::Tensor w = make_tensor(21, at::kFloat, {6, 4});
  const at::Tensor b = make_tensor(22, at::kBFloat16, {3});
  const int64_t begin = tp == 1 || t == 0 ? 0 : 4, rows = tp == 1 ? 6 : (t == 0 ? 4 : 2);

  Partition saved;
  saved.add("b", b);
  saved.add_split("w", w.narrow(0, begin, rows).clone(), 0, group);
  const SaveResult s = save(saved, ckpt, MPI_COMM_WORLD);
  // Replicas hold the same parts: each byte is written once.
  EXPECT_EQ(s.bytes_written_total, w.nbytes() + b.nbytes());

  Partition loaded;
  loaded.add("b", at::zeros_like(b));
  loaded.add_split("w", at::zeros({rows, 4}), 0, group);
  const LoadResult r = load(loaded, ckpt, MPI_COMM_WORLD);
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(same_bits(loaded.entries()[0].tensor, b));
  EXPECT_TRUE(same_bits(loaded.entries()[1].tensor, w.narrow(0, begin, rows)));
  EXPECT_TRUE(all_ranks(!::testing::Test::HasFailure()));
}

}  // namespace
}  // namespace shardload::testing
