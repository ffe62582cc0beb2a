#include "sharding/box.h"

#include <gtest/gtest.h>

#include <random>

#include "core/error.h"

namespace shardload {
namespace {

TEST(Box, FullBoxAndNumel) {
  EXPECT_EQ(full_box({3, 4}), (Box{{0, 0}, {3, 4}}));
  EXPECT_EQ(full_box({}), (Box{}));
  EXPECT_EQ(box_numel(full_box({})), 1);
  EXPECT_EQ(box_numel(Box{{1, 1}, {2, 0}}), 0);
  EXPECT_EQ(box_numel(Box{{1, 1}, {2, 3}}), 6);
}

TEST(Box, Intersect) {
  EXPECT_EQ(intersect(Box{{0, 0}, {4, 4}}, Box{{2, 3}, {4, 4}}), (Box{{2, 3}, {2, 1}}));
  EXPECT_EQ(intersect(Box{{0}, {4}}, Box{{4}, {2}}), std::nullopt);  // touching only
  EXPECT_EQ(intersect(Box{{0}, {4}}, Box{{1}, {0}}), std::nullopt);  // empty box
  EXPECT_EQ(intersect(Box{}, Box{}), Box{});                         // 0-d: the one element
  EXPECT_THROW(intersect(Box{{0}, {4}}, Box{{0, 0}, {4, 4}}), UsageError);
}

TEST(Box, ContainsAndInside) {
  EXPECT_TRUE(contains(Box{{0, 0}, {4, 4}}, Box{{1, 1}, {3, 3}}));
  EXPECT_FALSE(contains(Box{{0, 0}, {4, 4}}, Box{{1, 1}, {3, 4}}));
  EXPECT_TRUE(contains(Box{{0}, {1}}, Box{{9}, {0}}));  // empty inner
  EXPECT_TRUE(contains(Box{}, Box{}));
  EXPECT_TRUE(inside({4, 5}, Box{{0, 1}, {4, 4}}));
  EXPECT_FALSE(inside({4, 5}, Box{{0, 2}, {4, 4}}));
  EXPECT_FALSE(inside({4, 5}, Box{{-1, 0}, {1, 1}}));
  EXPECT_FALSE(inside({4, 5}, Box{{0}, {4}}));
  EXPECT_TRUE(inside({3}, Box{{3}, {0}}));  // an empty part at the end
  EXPECT_TRUE(inside({}, Box{}));
}

TEST(Box, Text) {
  EXPECT_EQ(box_str(Box{{0, 2}, {4, 6}}), "[0:4, 2:8]");
  EXPECT_EQ(box_str(Box{}), "[]");
}

TEST(Box, EvenSplitFollowsNumpyArraySplit) {
  // numpy.array_split(range(7), 3) -> sizes 3, 2, 2
  EXPECT_EQ(even_split({5, 7}, 1, 3, 0), (Box{{0, 0}, {5, 3}}));
  EXPECT_EQ(even_split({5, 7}, 1, 3, 1), (Box{{0, 3}, {5, 2}}));
  EXPECT_EQ(even_split({5, 7}, 1, 3, 2), (Box{{0, 5}, {5, 2}}));
  // numpy.array_split(range(2), 4) -> sizes 1, 1, 0, 0
  EXPECT_EQ(even_split({2}, 0, 4, 1), (Box{{1}, {1}}));
  EXPECT_EQ(even_split({2}, 0, 4, 3), (Box{{2}, {0}}));
  EXPECT_THROW(even_split({2}, 1, 2, 0), UsageError);
  EXPECT_THROW(even_split({2}, 0, 0, 0), UsageError);
  EXPECT_THROW(even_split({2}, 0, 2, 2), UsageError);
  EXPECT_THROW(even_split({}, 0, 1, 0), UsageError);
}

TEST(Box, EvenSplitTilesEveryShape) {
  for (int64_t size : {0, 1, 2, 7, 13}) {
    for (int parts = 1; parts <= 6; ++parts) {
      int64_t next = 0;
      for (int i = 0; i < parts; ++i) {
        const Box b = even_split({2, size}, 1, parts, i);
        EXPECT_EQ(b.offset[1], next);
        EXPECT_LE(b.shape[1], size / parts + 1);
        EXPECT_GE(b.shape[1], size / parts);
        next += b.shape[1];
      }
      EXPECT_EQ(next, size);
    }
  }
}

TEST(Box, SplitForBudgetExamples) {
  const Box box{{10, 0}, {4, 6}};
  EXPECT_EQ(split_for_budget(box, 4, 96), std::vector<Box>{box});
  EXPECT_EQ(split_for_budget(box, 4, 1000), std::vector<Box>{box});
  // two rows of 6 float32 fit in 50 bytes
  EXPECT_EQ(split_for_budget(box, 4, 50), (std::vector<Box>{{{10, 0}, {2, 6}}, {{12, 0}, {2, 6}}}));
  // a row does not fit in 20 bytes: each row cut into runs of 5 elements
  EXPECT_EQ(
      split_for_budget(Box{{0, 0}, {2, 6}}, 4, 20),
      (std::vector<Box>{{{0, 0}, {1, 5}}, {{0, 5}, {1, 1}}, {{1, 0}, {1, 5}}, {{1, 5}, {1, 1}}}));
  // an element larger than the budget is a piece of its own
  EXPECT_EQ(split_for_budget(Box{{0}, {3}}, 8, 4),
            (std::vector<Box>{{{0}, {1}}, {{1}, {1}}, {{2}, {1}}}));
  EXPECT_TRUE(split_for_budget(Box{{0, 0}, {0, 6}}, 4, 8).empty());
  EXPECT_EQ(split_for_budget(Box{}, 8, 4), std::vector<Box>{Box{}});
  EXPECT_THROW(split_for_budget(box, 0, 8), UsageError);
}

// Every element of the box lies in exactly one piece; pieces come in C order and fit.
TEST(Box, SplitForBudgetProperty) {
  std::mt19937 rng(12345);
  const std::vector<int64_t> sizes = {0, 1, 2, 3, 5, 7, 13};
  for (int iter = 0; iter < 300; ++iter) {
    const int ndim = static_cast<int>(rng() % 5);
    Box box;
    for (int d = 0; d < ndim; ++d) {
      box.offset.push_back(rng() % 4);
      box.shape.push_back(sizes[rng() % sizes.size()]);
    }
    const int64_t elem = int64_t{1} << (rng() % 4);
    const int64_t budget = 1 + static_cast<int64_t>(rng() % 200);
    const auto pieces = split_for_budget(box, elem, budget);
    SCOPED_TRACE(box_str(box) + " elem " + std::to_string(elem) + " budget " +
                 std::to_string(budget));
    if (box_numel(box) == 0) {
      EXPECT_TRUE(pieces.empty());
      continue;
    }
    // Visit the box's elements in C order; the pieces must list them in the same order.
    std::vector<int64_t> at = box.offset;
    size_t piece = 0;
    int64_t seen_in_piece = 0;
    int64_t total = 0;
    for (const Box& p : pieces) {
      EXPECT_TRUE(contains(box, p));
      EXPECT_GT(box_numel(p), 0);
      if (box_numel(p) > 1) {
        EXPECT_LE(box_numel(p) * elem, budget);
      }
      total += box_numel(p);
    }
    EXPECT_EQ(total, box_numel(box));
    for (int64_t n = 0; n < box_numel(box); ++n) {
      ASSERT_LT(piece, pieces.size());
      EXPECT_TRUE(contains(pieces[piece], Box{at, Shape(ndim, 1)})) << "element " << n;
      if (++seen_in_piece == box_numel(pieces[piece])) {
        ++piece;
        seen_in_piece = 0;
      }
      for (int d = ndim - 1; d >= 0; --d) {
        if (++at[d] < box.offset[d] + box.shape[d]) break;
        at[d] = box.offset[d];
      }
    }
    EXPECT_EQ(piece, pieces.size());
  }
}

}  // namespace
}  // namespace shardload
