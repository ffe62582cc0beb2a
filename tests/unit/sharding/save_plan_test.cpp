#include "sharding/save_plan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>

#include "core/error.h"
#include "sharding/rank_groups.h"
#include "sharding/resolve.h"

namespace shardload {
namespace {

using Kind = Declaration::Kind;

Declaration replicated(const std::string& key, Shape shape, DType dtype = DType::kFloat32) {
  return Declaration{key, dtype, std::move(shape), Kind::kReplicated, {}, {}, 0, {}};
}
Declaration shard(const std::string& key, Shape local, Shape global, Shape offset,
                  DType dtype = DType::kFloat32) {
  return Declaration{
      key, dtype, std::move(local), Kind::kShard, std::move(global), std::move(offset), 0, {}};
}
Declaration split(const std::string& key, Shape local, int64_t dim, std::vector<int> group = {},
                  DType dtype = DType::kFloat32) {
  return Declaration{key, dtype, std::move(local), Kind::kSplit, {}, {}, dim, std::move(group)};
}
Holding holding(const std::string& key, Shape global, Box region, DType dtype = DType::kFloat32) {
  return Holding{key, dtype, std::move(global), std::move(region)};
}

/// Every rank's declarations, canonicalised and grouped as the exchange delivers them, resolved.
RankGroups resolve(const std::vector<std::vector<Declaration>>& per_rank) {
  return resolve_declarations(DeclaredLayouts::from_ranks(per_rank));
}
RankGroups groups(const std::vector<std::vector<Holding>>& per_rank) {
  return RankGroups::merge_equal(per_rank);
}
RankGroups groups(RankGroups already) { return already; }
SavePlan plan_save_of(const std::vector<std::vector<Holding>>& per_rank) {
  return plan_save(RankGroups::merge_equal(per_rank));
}

/// Runs `f`, expects an exception of type E whose message contains every one of `parts`.
template <typename E, typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
  } catch (const E& e) {
    const std::string what = e.what();
    for (const auto& p : parts) EXPECT_NE(what.find(p), std::string::npos) << what << " / " << p;
    return;
  }
  ADD_FAILURE() << "expected an exception";
}

TEST(ResolveDeclarations, ReplicatedShardAndSplit) {
  const auto h = resolve({
      {replicated("b", {4}), split("w", {3, 5}, 0), shard("s", {2}, {6}, {4}, DType::kInt64)},
      {split("w", {2, 5}, 0), replicated("b", {4})},
      {replicated("b", {4}), split("w", {0, 5}, 0)},
  });
  ASSERT_EQ(h.ranks(), 3);
  ASSERT_EQ(h.of_rank(0).size(), 3u);
  EXPECT_EQ(h.of_rank(0)[0], holding("b", {4}, {{0}, {4}}));
  EXPECT_EQ(h.of_rank(0)[1], holding("w", {5, 5}, {{0, 0}, {3, 5}}));
  EXPECT_EQ(h.of_rank(0)[2], holding("s", {6}, {{4}, {2}}, DType::kInt64));
  EXPECT_EQ(h.of_rank(1)[0], holding("w", {5, 5}, {{3, 0}, {2, 5}}));
  EXPECT_EQ(h.of_rank(1)[1], holding("b", {4}, {{0}, {4}}));
  EXPECT_EQ(h.of_rank(2)[1], holding("w", {5, 5}, {{5, 0}, {0, 5}}));
}

TEST(ResolveDeclarations, SplitFollowsGroupOrder) {
  // Group [2, 0]: rank 2 holds the first part.
  const auto h = resolve({
      {split("w", {4, 3}, 1, {2, 0})},
      {replicated("other", {})},
      {split("w", {4, 2}, 1, {2, 0})},
  });
  EXPECT_EQ(h.of_rank(2)[0], holding("w", {4, 5}, {{0, 0}, {4, 2}}));
  EXPECT_EQ(h.of_rank(0)[0], holding("w", {4, 5}, {{0, 2}, {4, 3}}));
  EXPECT_EQ(h.of_rank(1)[0], holding("other", {}, Box{}));
}

TEST(ResolveDeclarations, ReplicasOfSplitGroupsShareOneGroup) {
  // DP 3 x TP 2: ranks (0, 1), (2, 3), (4, 5) each split w over their pair and shard v by box.
  std::vector<std::vector<Declaration>> d(6);
  for (int r = 0; r < 6; ++r) {
    const int tp = r % 2, first = r - tp;
    d[r] = {replicated("b", {4}), split("w", {tp == 0 ? 3 : 1, 2}, 0, {first, first + 1}),
            shard("v", {2}, {4}, {2 * tp})};
  }
  const DeclaredLayouts layouts = DeclaredLayouts::from_ranks(d);
  EXPECT_EQ(layouts.layouts.size(), 2u);  // one per tensor-parallel position
  const RankGroups h = resolve_declarations(layouts);
  ASSERT_EQ(h.groups(), 2);
  EXPECT_EQ(h.members[0], (std::vector<int>{0, 2, 4}));
  EXPECT_EQ(h.members[1], (std::vector<int>{1, 3, 5}));
  EXPECT_EQ(h.of_rank(4)[1], holding("w", {4, 2}, {{0, 0}, {3, 2}}));
  EXPECT_EQ(h.of_rank(5)[1], holding("w", {4, 2}, {{3, 0}, {1, 2}}));
  EXPECT_EQ(h.of_rank(3)[2], holding("v", {4}, {{2}, {2}}));
}

TEST(ResolveDeclarations, StragglersGetTheirOwnGroups) {
  // TP pairs (0, 1) ... (6, 7) split w of 4 rows 3 + 1; pair (2, 3) cuts it 2 + 2, and rank 7
  // holds an extra tensor. A split resolves alike on ranks whose split peers have the same
  // layouts: pairs (0, 1) and (4, 5) share, rank 6 (whose peer 7 differs) does not.
  std::vector<std::vector<Declaration>> d(8);
  for (int r = 0; r < 8; ++r) {
    const int tp = r % 2, first = r - tp;
    const int64_t rows = first == 2 ? 2 : (tp == 0 ? 3 : 1);
    d[r] = {split("w", {rows, 2}, 0, {first, first + 1})};
  }
  d[7].push_back(replicated("extra", {1}));
  const RankGroups h = resolve(d);
  EXPECT_EQ(h.members, (std::vector<std::vector<int>>{{0, 4}, {1, 5}, {2}, {3}, {6}, {7}}));
  EXPECT_EQ(h.of_rank(0)[0], holding("w", {4, 2}, {{0, 0}, {3, 2}}));
  EXPECT_EQ(h.of_rank(1)[0], holding("w", {4, 2}, {{3, 0}, {1, 2}}));
  EXPECT_EQ(h.of_rank(2)[0], holding("w", {4, 2}, {{0, 0}, {2, 2}}));
  EXPECT_EQ(h.of_rank(3)[0], holding("w", {4, 2}, {{2, 0}, {2, 2}}));
  EXPECT_EQ(h.of_rank(6)[0], holding("w", {4, 2}, {{0, 0}, {3, 2}}));
  ASSERT_EQ(h.of_rank(7).size(), 2u);
  EXPECT_EQ(h.of_rank(7)[0], holding("w", {4, 2}, {{3, 0}, {1, 2}}));
}

TEST(ResolveDeclarations, SplitOverAllRanksGivesEachRankItsOffset) {
  std::vector<std::vector<Declaration>> d;
  for (int r = 0; r < 5; ++r) d.push_back({split("w", {r, 3}, 0), replicated("b", {2})});
  const RankGroups h = resolve(d);
  EXPECT_EQ(h.groups(), 5);
  int64_t offset = 0;
  for (int r = 0; r < 5; ++r) {
    EXPECT_EQ(h.of_rank(r)[0], holding("w", {10, 3}, {{offset, 0}, {r, 3}}));
    offset += r;
  }
}

/// The per-rank meaning of declarations, written plainly (every rank, every member): the oracle
/// the grouped resolution must agree with.
std::vector<std::vector<Holding>> resolve_plainly(const std::vector<std::vector<Declaration>>& d) {
  const int n = static_cast<int>(d.size());
  std::vector<std::vector<Holding>> out(n);
  for (int r = 0; r < n; ++r) {
    for (const Declaration& x : d[r]) {
      Holding h{x.key, x.dtype, x.local_shape, full_box(x.local_shape)};
      if (x.kind == Kind::kShard) {
        h.global_shape = x.global_shape;
        h.region = Box{x.offset, x.local_shape};
      } else if (x.kind == Kind::kSplit) {
        std::vector<int> group = x.group;
        if (group.empty()) {
          for (int m = 0; m < n; ++m) group.push_back(m);
        }
        int64_t total = 0;
        for (int m : group) {
          for (const Declaration& o : d[m]) {
            if (o.key != x.key) continue;
            if (m == r) h.region.offset[x.split_dim] = total;
            total += o.local_shape[x.split_dim];
          }
        }
        h.global_shape[x.split_dim] = total;
      }
      out[r].push_back(std::move(h));
    }
  }
  return out;
}

TEST(ResolveDeclarations, GroupedResolutionEqualsThePlainOne) {
  std::mt19937 rng(5);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  int shared = 0;
  for (int iter = 0; iter < 300; ++iter) {
    const int dp = pick(1, 3), tp = pick(1, 3), n = dp * tp;
    const bool over_all = pick(0, 3) == 0;
    // Per tensor-parallel position: local rows of the split; a straggler replica may differ.
    std::vector<int64_t> rows(tp);
    for (auto& x : rows) x = pick(0, 3);
    // A straggling replica cuts the split the other way round (same total) and holds an extra
    // tensor on its first rank.
    const int straggler = pick(0, 2) == 0 ? pick(0, dp - 1) : -1;
    const bool reversed = pick(0, 1) == 0;  // groups listed last rank first
    std::vector<std::vector<Declaration>> d(n);
    for (int r = 0; r < n; ++r) {
      const int t = r % tp, first = r - t;
      std::vector<int> group;
      for (int m = first; m < first + tp; ++m) group.push_back(m);
      if (reversed) std::reverse(group.begin(), group.end());
      const bool straggles = first / tp == straggler;
      const int64_t mine = straggles ? rows[tp - 1 - t] : rows[t];
      d[r] = {replicated("b", {3}), split("w", {mine, 2}, 0, group),
              shard("v", {1, 4}, {tp, 4}, {t, 0})};
      if (over_all) d[r].push_back(split("all", {2, mine}, 1));
      if (straggles && r == first) d[r].push_back(replicated("extra", {1}));
    }
    SCOPED_TRACE("iter " + std::to_string(iter) + " dp " + std::to_string(dp) + " tp " +
                 std::to_string(tp) + " straggler " + std::to_string(straggler));
    const RankGroups h = resolve(d);
    const auto plain = resolve_plainly(d);
    for (int r = 0; r < n; ++r) EXPECT_EQ(h.of_rank(r), plain[r]) << "rank " << r;
    EXPECT_NO_THROW(check_rank_groups(h, "test"));
    if (!over_all && straggler < 0) EXPECT_EQ(h.groups(), tp);
    shared += h.groups() < n;
    if (HasFailure()) break;
  }
  EXPECT_GT(shared, 100);
}

TEST(ResolveDeclarations, Errors) {
  expect_error<UsageError>(
      [] {
        resolve({{replicated("a", {2}), replicated("a", {2})}});
      },
      {"'a'", "rank 0", "twice"});
  expect_error<UsageError>(
      [] {
        resolve({{split("w", {2}, 0, {1})}, {split("w", {2}, 0, {1})}});
      },
      {"'w'", "rank 0", "[1]", "does not include"});
  expect_error<UsageError>(
      [] {
        resolve({{split("w", {2}, 0, {0, 3})}});
      },
      {"'w'", "rank 3", "1 ranks"});
  expect_error<UsageError>([] { resolve({{split("w", {2}, 1)}}); },
                           {"'w'", "rank 0", "dimension 1"});
  expect_error<UsageError>(
      [] {
        resolve({{split("w", {2}, 0)}, {}});
      },
      {"'w'", "rank 1 does not declare it"});
  expect_error<UsageError>(
      [] {
        resolve({{split("w", {2}, 0)}, {replicated("w", {2})}});
      },
      {"'w'", "rank 0 declares it split", "rank 1 declares it replicated"});
  expect_error<UsageError>(
      [] {
        resolve({{split("w", {2, 2}, 0)}, {split("w", {2, 2}, 1)}});
      },
      {"'w'", "rank 0", "rank 1", "dimension 0", "dimension 1"});
  expect_error<UsageError>(
      [] {
        resolve({{split("w", {2}, 0, {0, 1})}, {split("w", {2}, 0, {1, 0})}});
      },
      {"'w'", "rank 0", "rank 1", "[0, 1]", "[1, 0]"});
  expect_error<UsageError>(
      [] {
        resolve({{split("w", {2, 3}, 0)}, {split("w", {2, 4}, 0)}});
      },
      {"'w'", "rank 0", "rank 1", "[2, 3]", "[2, 4]"});
  expect_error<UsageError>([] { resolve({{shard("s", {3}, {4}, {2})}}); },
                           {"'s'", "rank 0", "[2:5]", "outside", "[4]"});
  expect_error<UsageError>(
      [] {
        resolve({{shard("s", {3}, {4, 4}, {0})}});
      },
      {"'s'", "rank 0", "dimensions"});
  expect_error<UsageError>([] { resolve({{replicated("n", {-1})}}); },
                           {"'n'", "rank 0", "negative"});
  expect_error<UsageError>(
      [] {
        resolve(
            {{replicated("layers.0.w", {2})}, {replicated("layers.0.w", {2}, DType::kBFloat16)}});
      },
      {"key 'layers.0.w': rank 0 declares dtype float32, rank 1 declares bfloat16"});
  expect_error<UsageError>(
      [] {
        resolve({{replicated("b", {2})}, {}, {replicated("b", {3})}});
      },
      {"'b'", "rank 0", "rank 2", "[2]", "[3]"});
}

TEST(PlanSave, ReplicasWrittenOnceAndBalanced) {
  // Three replicated tensors of 400, 40 and 40 bytes over two ranks: the big one goes to rank 0,
  // the two small ones to rank 1 (fewest bytes so far), then rank 1 again (40 < 400).
  std::vector<std::vector<Holding>> h(2);
  for (int r = 0; r < 2; ++r) {
    h[r] = {holding("small1", {10}, full_box({10})), holding("big", {100}, full_box({100})),
            holding("small2", {10}, full_box({10}))};
  }
  const SavePlan plan = plan_save(groups(h));
  EXPECT_EQ(plan.writes, (std::vector<std::vector<int32_t>>{{1}, {0, 2}}));
  EXPECT_EQ(plan.bytes_per_rank, (std::vector<int64_t>{400, 80}));
}

TEST(PlanSave, TiesGoToLowerRank) {
  std::vector<std::vector<Holding>> h(3, {holding("a", {2, 2}, full_box({2, 2}))});
  const SavePlan plan = plan_save(groups(h));
  EXPECT_EQ(plan.writes, (std::vector<std::vector<int32_t>>{{0}, {}, {}}));
  EXPECT_EQ(plan.bytes_per_rank, (std::vector<int64_t>{16, 0, 0}));
}

TEST(PlanSave, SplitWrittenByEachHolderAndEmptyPartsSkipped) {
  const auto h = resolve({{split("w", {2, 3}, 0), replicated("b", {3}, DType::kInt8)},
                          {split("w", {1, 3}, 0), replicated("b", {3}, DType::kInt8)},
                          {split("w", {0, 3}, 0), replicated("b", {3}, DType::kInt8)}});
  const SavePlan plan = plan_save(groups(h));
  // w parts: 24 bytes (rank 0), 12 bytes (rank 1), empty (rank 2, not written);
  // b (3 bytes): rank 2 has written nothing.
  EXPECT_EQ(plan.writes, (std::vector<std::vector<int32_t>>{{0}, {0}, {1}}));
  EXPECT_EQ(plan.bytes_per_rank, (std::vector<int64_t>{24, 12, 3}));
}

TEST(PlanSave, ZeroSizeTensorIsWrittenOnce) {
  // Split of a [0, 4] tensor along dim 1: distinct, empty regions; exactly one is written.
  const auto h = resolve({{split("z", {0, 2}, 1), replicated("e", {0})},
                          {split("z", {0, 2}, 1), replicated("e", {0})}});
  const SavePlan plan = plan_save(groups(h));
  int64_t z_writes = 0, e_writes = 0;
  for (int r = 0; r < 2; ++r) {
    for (int32_t i : plan.writes[r]) (h.of_rank(r)[i].key == "z" ? z_writes : e_writes)++;
  }
  EXPECT_EQ(z_writes, 1);
  EXPECT_EQ(e_writes, 1);
  EXPECT_EQ(plan.bytes_per_rank, (std::vector<int64_t>{0, 0}));
}

TEST(PlanSave, ScalarTensor) {
  std::vector<std::vector<Holding>> h(2, {holding("step", {}, Box{}, DType::kInt64)});
  const SavePlan plan = plan_save(groups(h));
  EXPECT_EQ(plan.writes, (std::vector<std::vector<int32_t>>{{0}, {}}));
  EXPECT_EQ(plan.bytes_per_rank, (std::vector<int64_t>{8, 0}));
}

TEST(PlanSave, BytesStayWithinOneLargestRegion) {
  // 20 replicated tensors of growing size over 3 ranks.
  std::vector<std::vector<Holding>> h(3);
  int64_t largest = 0;
  for (int k = 0; k < 20; ++k) {
    for (auto& rank : h) rank.push_back(holding("t" + std::to_string(k), {k + 1}, {{0}, {k + 1}}));
    largest = std::max<int64_t>(largest, 4 * (k + 1));
  }
  const SavePlan plan = plan_save(groups(h));
  int64_t total = 0;
  for (int r = 0; r < 3; ++r) {
    total += plan.bytes_per_rank[r];
    for (int s = 0; s < 3; ++s) {
      EXPECT_LE(plan.bytes_per_rank[r] - plan.bytes_per_rank[s], largest);
    }
  }
  EXPECT_EQ(total, 4 * 20 * 21 / 2);
}

TEST(PlanSave, Errors) {
  expect_error<UsageError>(
      [] {
        plan_save_of(
            {{holding("w", {4}, {{0}, {4}})}, {holding("w", {4}, {{0}, {4}}, DType::kFloat16)}});
      },
      {"'w'", "rank 0", "rank 1", "float32", "float16"});
  expect_error<UsageError>(
      [] {
        plan_save_of({{holding("w", {4}, {{0}, {4}})}, {holding("w", {5}, {{0}, {5}})}});
      },
      {"'w'", "rank 0", "rank 1", "[4]", "[5]"});
  expect_error<UsageError>(
      [] {
        plan_save_of({{holding("w", {4}, {{2}, {3}})}});
      },
      {"'w'", "rank 0", "[2:5]", "outside"});
  expect_error<UsageError>(
      [] {
        plan_save_of({{holding("w", {4}, {{0}, {3}})}, {holding("w", {4}, {{2}, {2}})}});
      },
      {"'w'", "[0:3]", "rank 0", "[2:4]", "rank 1", "overlaps"});
  expect_error<UsageError>(
      [] {
        plan_save_of(
            {{holding("w", {4, 6}, {{0, 0}, {4, 2}})}, {holding("w", {4, 6}, {{0, 4}, {4, 2}})}});
      },
      {"'w'", "ranks [0, 1]", "[0:4, 2:4]", "uncovered"});
  expect_error<UsageError>(
      [] {
        plan_save_of({{holding("w", {4}, {{0}, {4}}), holding("w", {4}, {{0}, {4}})}});
      },
      {"'w'", "rank 0", "twice"});
}

}  // namespace
}  // namespace shardload
