#include <gtest/gtest.h>

#include <string>

#include "core/error.h"
#include "sharding/save_plan.h"

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
  const auto h = resolve_declarations({
      {replicated("b", {4}), split("w", {3, 5}, 0), shard("s", {2}, {6}, {4}, DType::kInt64)},
      {split("w", {2, 5}, 0), replicated("b", {4})},
      {replicated("b", {4}), split("w", {0, 5}, 0)},
  });
  ASSERT_EQ(h.size(), 3u);
  ASSERT_EQ(h[0].size(), 3u);
  EXPECT_EQ(h[0][0], holding("b", {4}, {{0}, {4}}));
  EXPECT_EQ(h[0][1], holding("w", {5, 5}, {{0, 0}, {3, 5}}));
  EXPECT_EQ(h[0][2], holding("s", {6}, {{4}, {2}}, DType::kInt64));
  EXPECT_EQ(h[1][0], holding("w", {5, 5}, {{3, 0}, {2, 5}}));
  EXPECT_EQ(h[1][1], holding("b", {4}, {{0}, {4}}));
  EXPECT_EQ(h[2][1], holding("w", {5, 5}, {{5, 0}, {0, 5}}));
}

TEST(ResolveDeclarations, SplitFollowsGroupOrder) {
  // Group [2, 0]: rank 2 holds the first part.
  const auto h = resolve_declarations({
      {split("w", {4, 3}, 1, {2, 0})},
      {replicated("other", {})},
      {split("w", {4, 2}, 1, {2, 0})},
  });
  EXPECT_EQ(h[2][0], holding("w", {4, 5}, {{0, 0}, {4, 2}}));
  EXPECT_EQ(h[0][0], holding("w", {4, 5}, {{0, 2}, {4, 3}}));
  EXPECT_EQ(h[1][0], holding("other", {}, Box{}));
}

TEST(ResolveDeclarations, Errors) {
  expect_error<UsageError>(
      [] {
        resolve_declarations({{replicated("a", {2}), replicated("a", {2})}});
      },
      {"'a'", "rank 0", "twice"});
  expect_error<UsageError>(
      [] {
        resolve_declarations({{split("w", {2}, 0, {1})}, {split("w", {2}, 0, {1})}});
      },
      {"'w'", "rank 0", "[1]", "does not include"});
  expect_error<UsageError>(
      [] {
        resolve_declarations({{split("w", {2}, 0, {0, 3})}});
      },
      {"'w'", "rank 3", "1 ranks"});
  expect_error<UsageError>([] { resolve_declarations({{split("w", {2}, 1)}}); },
                           {"'w'", "rank 0", "dimension 1"});
  expect_error<UsageError>(
      [] {
        resolve_declarations({{split("w", {2}, 0)}, {}});
      },
      {"'w'", "rank 1 does not declare it"});
  expect_error<UsageError>(
      [] {
        resolve_declarations({{split("w", {2}, 0)}, {replicated("w", {2})}});
      },
      {"'w'", "rank 0 declares it split", "rank 1 declares it replicated"});
  expect_error<UsageError>(
      [] {
        resolve_declarations({{split("w", {2, 2}, 0)}, {split("w", {2, 2}, 1)}});
      },
      {"'w'", "rank 0", "rank 1", "dimension 0", "dimension 1"});
  expect_error<UsageError>(
      [] {
        resolve_declarations({{split("w", {2}, 0, {0, 1})}, {split("w", {2}, 0, {1, 0})}});
      },
      {"'w'", "rank 0", "rank 1", "[0, 1]", "[1, 0]"});
  expect_error<UsageError>(
      [] {
        resolve_declarations({{split("w", {2, 3}, 0)}, {split("w", {2, 4}, 0)}});
      },
      {"'w'", "rank 0", "rank 1", "[2, 3]", "[2, 4]"});
  expect_error<UsageError>([] { resolve_declarations({{shard("s", {3}, {4}, {2})}}); },
                           {"'s'", "rank 0", "[2:5]", "outside", "[4]"});
  expect_error<UsageError>(
      [] {
        resolve_declarations({{shard("s", {3}, {4, 4}, {0})}});
      },
      {"'s'", "rank 0", "dimensions"});
  expect_error<UsageError>([] { resolve_declarations({{replicated("n", {-1})}}); },
                           {"'n'", "rank 0", "negative"});
  expect_error<UsageError>(
      [] {
        resolve_declarations(
            {{replicated("layers.0.w", {2})}, {replicated("layers.0.w", {2}, DType::kBFloat16)}});
      },
      {"key 'layers.0.w': rank 0 declares dtype float32, rank 1 declares bfloat16"});
  expect_error<UsageError>(
      [] {
        resolve_declarations({{replicated("b", {2})}, {}, {replicated("b", {3})}});
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
  const SavePlan plan = plan_save(h);
  EXPECT_EQ(plan.writes, (std::vector<std::vector<int32_t>>{{1}, {0, 2}}));
  EXPECT_EQ(plan.bytes_per_rank, (std::vector<int64_t>{400, 80}));
}

TEST(PlanSave, TiesGoToLowerRank) {
  std::vector<std::vector<Holding>> h(3, {holding("a", {2, 2}, full_box({2, 2}))});
  const SavePlan plan = plan_save(h);
  EXPECT_EQ(plan.writes, (std::vector<std::vector<int32_t>>{{0}, {}, {}}));
  EXPECT_EQ(plan.bytes_per_rank, (std::vector<int64_t>{16, 0, 0}));
}

TEST(PlanSave, SplitWrittenByEachHolderAndEmptyPartsSkipped) {
  const auto h =
      resolve_declarations({{split("w", {2, 3}, 0), replicated("b", {3}, DType::kInt8)},
                            {split("w", {1, 3}, 0), replicated("b", {3}, DType::kInt8)},
                            {split("w", {0, 3}, 0), replicated("b", {3}, DType::kInt8)}});
  const SavePlan plan = plan_save(h);
  // w parts: 24 bytes (rank 0), 12 bytes (rank 1), empty (rank 2, not written);
  // b (3 bytes): rank 2 has written nothing.
  EXPECT_EQ(plan.writes, (std::vector<std::vector<int32_t>>{{0}, {0}, {1}}));
  EXPECT_EQ(plan.bytes_per_rank, (std::vector<int64_t>{24, 12, 3}));
}

TEST(PlanSave, ZeroSizeTensorIsWrittenOnce) {
  // Split of a [0, 4] tensor along dim 1: distinct, empty regions; exactly one is written.
  const auto h = resolve_declarations({{split("z", {0, 2}, 1), replicated("e", {0})},
                                       {split("z", {0, 2}, 1), replicated("e", {0})}});
  const SavePlan plan = plan_save(h);
  int64_t z_writes = 0, e_writes = 0;
  for (int r = 0; r < 2; ++r) {
    for (int32_t i : plan.writes[r]) (h[r][i].key == "z" ? z_writes : e_writes)++;
  }
  EXPECT_EQ(z_writes, 1);
  EXPECT_EQ(e_writes, 1);
  EXPECT_EQ(plan.bytes_per_rank, (std::vector<int64_t>{0, 0}));
}

TEST(PlanSave, ScalarTensor) {
  std::vector<std::vector<Holding>> h(2, {holding("step", {}, Box{}, DType::kInt64)});
  const SavePlan plan = plan_save(h);
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
  const SavePlan plan = plan_save(h);
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
        plan_save(
            {{holding("w", {4}, {{0}, {4}})}, {holding("w", {4}, {{0}, {4}}, DType::kFloat16)}});
      },
      {"'w'", "rank 0", "rank 1", "float32", "float16"});
  expect_error<UsageError>(
      [] {
        plan_save({{holding("w", {4}, {{0}, {4}})}, {holding("w", {5}, {{0}, {5}})}});
      },
      {"'w'", "rank 0", "rank 1", "[4]", "[5]"});
  expect_error<UsageError>(
      [] {
        plan_save({{holding("w", {4}, {{2}, {3}})}});
      },
      {"'w'", "rank 0", "[2:5]", "outside"});
  expect_error<UsageError>(
      [] {
        plan_save({{holding("w", {4}, {{0}, {3}})}, {holding("w", {4}, {{2}, {2}})}});
      },
      {"'w'", "[0:3]", "rank 0", "[2:4]", "rank 1", "overlaps"});
  expect_error<UsageError>(
      [] {
        plan_save(
            {{holding("w", {4, 6}, {{0, 0}, {4, 2}})}, {holding("w", {4, 6}, {{0, 4}, {4, 2}})}});
      },
      {"'w'", "ranks [0, 1]", "[0:4, 2:4]", "uncovered"});
  expect_error<UsageError>(
      [] {
        plan_save({{holding("w", {4}, {{0}, {4}}), holding("w", {4}, {{0}, {4}})}});
      },
      {"'w'", "rank 0", "twice"});
}

}  // namespace
}  // namespace shardload
