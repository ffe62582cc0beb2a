// validate_index's overlap check against a brute-force oracle, at sizes where a quadratic check
// would stall, and its refusal when chunks vary along three or more dimensions beyond its budget.
#include "sharding/index_check.h"

#include <gtest/gtest.h>

#include <random>

#include "core/error.h"
#include "sharding/box.h"

namespace shardload {
namespace {

ChunkRecord chunk(const std::string& key, Shape global, Shape offset, Shape shape) {
  const auto nbytes = static_cast<uint64_t>(numel(shape) * 4);
  return ChunkRecord{
      key, DType::kFloat32, std::move(global), std::move(offset), std::move(shape), 0, "/d", nbytes,
      0};
}

bool brute_force_overlap(const std::vector<ChunkRecord>& index) {
  for (size_t a = 0; a < index.size(); ++a) {
    for (size_t b = 0; b < a; ++b) {
      if (index[a].key == index[b].key &&
          intersect(Box{index[a].offset, index[a].shape}, Box{index[b].offset, index[b].shape})) {
        return true;
      }
    }
  }
  return false;
}

bool validate_finds_overlap(const std::vector<ChunkRecord>& index) {
  try {
    validate_index(index, {"f.h5"});
    return false;
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("overlaps"), std::string::npos) << e.what();
    return true;
  }
}

TEST(ValidateIndex, OverlapsAgreeWithBruteForceAlongOneTwoAndThreeDimensions) {
  std::mt19937 g(11);
  int overlapping = 0, clean = 0;
  for (int trial = 0; trial < 600; ++trial) {
    const int dims = 1 + trial % 3;
    const Shape global(static_cast<size_t>(dims), 6);
    std::vector<ChunkRecord> index;
    const int n = std::uniform_int_distribution<int>(2, 7)(g);
    for (int c = 0; c < n; ++c) {
      Shape off(static_cast<size_t>(dims)), shape(static_cast<size_t>(dims));
      for (int d = 0; d < dims; ++d) {
        off[d] = std::uniform_int_distribution<int64_t>(0, 5)(g);
        shape[d] = std::uniform_int_distribution<int64_t>(0, 6 - off[d])(g);
        if (trial % 5 == 0 && d == 0) shape[d] = std::min<int64_t>(shape[d], 1);
      }
      index.push_back(chunk(trial % 2 ? "k" : (c % 2 ? "a" : "b"), global, off, shape));
    }
    const bool expect = brute_force_overlap(index);
    EXPECT_EQ(validate_finds_overlap(index), expect) << "trial " << trial;
    (expect ? overlapping : clean)++;
  }
  EXPECT_GT(overlapping, 100);
  EXPECT_GT(clean, 100);
}

TEST(ValidateIndex, HundredThousandChunksOfOneKeyAreCheckedWithoutPairwiseWork) {
  // 10^5 rows of a split along dim 0 (a quadratic check would compare 5 * 10^9 pairs).
  std::vector<ChunkRecord> rows;
  const int64_t n = 100000;
  for (int64_t i = 0; i < n; ++i) rows.push_back(chunk("w", {n, 2}, {n - 1 - i, 0}, {1, 2}));
  EXPECT_NO_THROW(validate_index(rows, {"f.h5"}));
  rows.push_back(chunk("w", {n, 2}, {n / 2, 1}, {1, 1}));
  try {
    validate_index(rows, {"f.h5"});
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("[50000:50001, 0:2] in f.h5 overlaps chunk "
                                         "[50000:50001, 1:2]"),
              std::string::npos)
        << e.what();
  }
  // A 2-D grid of 300 x 300 chunks, then one cell twice.
  std::vector<ChunkRecord> grid;
  for (int64_t i = 0; i < 300; ++i) {
    for (int64_t j = 0; j < 300; ++j) grid.push_back(chunk("g", {600, 300}, {2 * i, j}, {2, 1}));
  }
  EXPECT_NO_THROW(validate_index(grid, {"f.h5"}));
  grid.push_back(chunk("g", {600, 300}, {3, 7}, {1, 1}));
  EXPECT_THROW(validate_index(grid, {"f.h5"}), FormatError);
}

TEST(ValidateIndex, ThreeVaryingDimensionsBeyondTheWorkLimitAreRefused) {
  // 3-D grid: fine.
  std::vector<ChunkRecord> cube;
  for (int64_t i = 0; i < 8; ++i) {
    for (int64_t j = 0; j < 8; ++j) {
      for (int64_t k = 0; k < 8; ++k) cube.push_back(chunk("c", {8, 8, 8}, {i, j, k}, {1, 1, 1}));
    }
  }
  EXPECT_NO_THROW(validate_index(cube, {"f.h5"}));
  cube.push_back(chunk("c", {8, 8, 8}, {7, 7, 6}, {1, 1, 2}));
  EXPECT_TRUE(validate_finds_overlap(cube));
  // Every chunk's x-range meets every other's: the sweep would compare all pairs.
  std::vector<ChunkRecord> staircase;
  const int64_t n = 20000;
  for (int64_t i = 0; i < n; ++i) {
    staircase.push_back(chunk("s", {2 * n, n, 2}, {i, i, 0}, {n, 1, 1 + i % 2}));
  }
  try {
    validate_index(staircase, {"f.h5"});
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("key 's'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("work limit"), std::string::npos) << e.what();
  }
}

TEST(ValidateIndex, ShapesWhoseCountsOverflowAreFormatErrorsNamingTheKey) {
  const int64_t big = int64_t{1} << 40;
  try {
    validate_index({chunk("huge", {big, big}, {0, 0}, {0, 0})}, {"f.h5"});
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("key 'huge'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("int64"), std::string::npos) << e.what();
  }
  EXPECT_THROW(validate_index({chunk("w", {INT64_MAX}, {INT64_MAX - 1}, {2})}, {"f.h5"}),
               FormatError);
}

}  // namespace
}  // namespace shardload

namespace shardload {
namespace {

// The gathered index is sorted into the saved order: as a stable sort by (order, file) would,
// whether it arrives sorted, as a few sorted runs (merged) or as many (sorted).
TEST(SortBySavedOrder, MatchesAStableSortForAnyNumberOfRuns) {
  std::mt19937 rng(16);
  for (int runs : {1, 2, 3, 7, 64, 65, 300}) {
    std::vector<ChunkRecord> gathered;
    for (int r = 0; r < runs; ++r) {
      std::vector<ChunkRecord> run;
      const int rows = static_cast<int>(rng() % 40);
      for (int i = 0; i < rows; ++i) {
        ChunkRecord c;
        c.order = static_cast<int64_t>(rng() % 50);  // chunks of one key share an order
        c.file = static_cast<int32_t>(rng() % 4);
        c.dataset = "/run" + std::to_string(r) + "/" + std::to_string(i);  // identifies the row
        run.push_back(std::move(c));
      }
      std::stable_sort(run.begin(), run.end(), [](const ChunkRecord& a, const ChunkRecord& b) {
        return a.order != b.order ? a.order < b.order : a.file < b.file;
      });
      gathered.insert(gathered.end(), run.begin(), run.end());
    }
    std::vector<ChunkRecord> expect = gathered;
    std::stable_sort(expect.begin(), expect.end(), [](const ChunkRecord& a, const ChunkRecord& b) {
      return a.order != b.order ? a.order < b.order : a.file < b.file;
    });
    sort_by_saved_order(gathered);
    ASSERT_EQ(gathered.size(), expect.size());
    for (size_t i = 0; i < expect.size(); ++i) {
      ASSERT_EQ(gathered[i].dataset, expect[i].dataset) << runs << " runs, row " << i;
    }
  }
}

}  // namespace
}  // namespace shardload
