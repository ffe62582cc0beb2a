// Collective save: round trips of every dtype and shape kind at 1-4 ranks, deduplication of
// replicated tensors, bad declarations (same error on every rank, nothing written), atomicity.
#include <filesystem>
#include <map>

#include "io/commit/checkpoint_dir.h"
#include "loader/shardload.h"
#include "mpi_test_util.h"

namespace shardload::testing {
namespace {

namespace fs = std::filesystem;

/// Replicated tensors of every dtype and shape kind, and split ones (uneven, some parts empty).
struct Model {
  TensorList full;  // the global tensors, identical on every rank
  Partition part;   // this rank's partition
};

Model make_model(int rank, int ranks) {
  Model m;
  int64_t seed = 1;
  for (auto dtype : all_dtypes()) {
    std::string name(c10::toString(dtype));
    m.full.push_back({"rep." + name, make_tensor(seed++, dtype, {3, 5})});
    m.full.push_back({"scalar." + name, make_tensor(seed++, dtype, {})});
    m.full.push_back({"empty." + name, make_tensor(seed++, dtype, {0, 4})});
    // Split along dim 1 so that ranks hold uneven parts (7 = 3+2+1+1 at 4 ranks).
    m.full.push_back({"split." + name, make_tensor(seed++, dtype, {4, 7})});
  }
  // A non-contiguous tensor (transposed view) and keys that are not HDF5-path-safe.
  m.full.push_back({"noncontig/t", make_tensor(seed++, at::kFloat, {6, 4}).t()});
  m.full.push_back({"a.b c/üñí 'quote' \"dq\"", make_tensor(seed++, at::kFloat, {2})});
  m.full.push_back({std::string(300, 'k'), make_tensor(seed++, at::kInt, {3})});
  for (const auto& [key, t] : m.full) {
    if (key.rfind("split.", 0) == 0) {
      Box b = even_split({4, 7}, 1, ranks, rank);
      m.part.add_split(key, t.narrow(1, b.offset[1], b.shape[1]), 1);
    } else {
      m.part.add(key, t);
    }
  }
  return m;
}

TEST(Save, RoundTripEveryDtypeAndShapeKind) {
  SharedDir dir("save-rt");
  int rank = world_rank(), ranks = world_size();
  Model m = make_model(rank, ranks);
  std::string ckpt = dir.path + "/ckpt";
  SaveResult saved = save(m.part, ckpt, MPI_COMM_WORLD, {.metadata = {{"step", "42"}}});
  EXPECT_EQ(saved.num_shards, ranks);

  // Load into zeros of the same layout: every rank gets its parts back bit for bit.
  Model target = make_model(rank, ranks);
  for (auto& e : target.part.entries()) e.tensor = at::zeros_like(e.tensor);
  LoadResult r = load(target.part, ckpt, MPI_COMM_WORLD);
  EXPECT_TRUE(r.ok);
  EXPECT_TRUE(r.missing_keys.empty());
  EXPECT_TRUE(r.unexpected_keys.empty());
  for (size_t i = 0; i < m.part.entries().size(); ++i) {
    EXPECT_TRUE(same_bits(m.part.entries()[i].tensor, target.part.entries()[i].tensor))
        << "rank " << rank << " key " << m.part.entries()[i].key;
  }
  // The whole checkpoint read back in one process equals the global tensors.
  if (rank == 0) {
    TensorList back = read_checkpoint(ckpt);
    std::map<std::string, at::Tensor> by_key;
    for (auto& t : back) by_key[t.key] = t.tensor;
    ASSERT_EQ(back.size(), m.full.size());
    for (const auto& [key, t] : m.full) {
      ASSERT_TRUE(by_key.count(key)) << key;
      EXPECT_TRUE(same_bits(by_key[key], t.contiguous())) << key;
    }
    CheckpointInfo info = read_checkpoint_info(ckpt);
    EXPECT_EQ(info.manifest.num_ranks, ranks);
    ASSERT_EQ(info.manifest.metadata.size(), 1u);
    EXPECT_EQ(info.manifest.metadata[0].second, "42");
    EXPECT_TRUE(verify_checkpoint(ckpt).problems.empty());
  }
}

TEST(Save, ReplicatedTensorsAreStoredOnceAndWritesAreBalanced) {
  SharedDir dir("save-dedup");
  int rank = world_rank(), ranks = world_size();
  Partition part;
  int64_t largest = 0;
  for (int i = 0; i < 12; ++i) {
    at::Tensor t = make_tensor(i, at::kFloat, {16 + 8 * i, 32});
    largest = std::max<int64_t>(largest, static_cast<int64_t>(t.nbytes()));
    part.add("w" + std::to_string(i), t);
  }
  SaveResult saved = save(part, dir.path + "/ckpt", MPI_COMM_WORLD);
  std::vector<int64_t> written(static_cast<size_t>(ranks));
  MPI_Allgather(&saved.bytes_written, 1, MPI_INT64_T, written.data(), 1, MPI_INT64_T,
                MPI_COMM_WORLD);
  auto [lo, hi] = std::minmax_element(written.begin(), written.end());
  EXPECT_LE(*hi - *lo, largest) << "bytes written per rank are not balanced";
  if (rank == 0) {
    CheckpointInfo info = read_checkpoint_info(dir.path + "/ckpt");
    std::map<std::string, int> count;
    int64_t total = 0;
    for (const auto& row : info.index) {
      ++count[row.key];
      total += static_cast<int64_t>(row.nbytes);
    }
    EXPECT_EQ(count.size(), 12u);
    for (const auto& [key, n] : count) EXPECT_EQ(n, 1) << key << " stored " << n << " times";
    EXPECT_EQ(total, saved.bytes_written_total);
  }
}

/// Saves a partition built by `declare` and expects a UsageError containing `expected` on every
/// rank, the same text everywhere, and nothing written.
void expect_bad_declaration(const std::function<void(Partition&, int, int)>& declare,
                            const std::string& expected) {
  SharedDir dir("save-bad");
  Partition part;
  declare(part, world_rank(), world_size());
  std::string error = error_of<UsageError>([&] { save(part, dir.path + "/ckpt", MPI_COMM_WORLD); });
  EXPECT_NE(error.find(expected), std::string::npos) << error;
  EXPECT_TRUE(same_on_all_ranks(error)) << "ranks disagree: " << error;
  barrier();
  EXPECT_TRUE(fs::is_empty(dir.path)) << "something was written";
}

TEST(Save, DifferentDtypesOnDifferentRanksFailEverywhere) {
  expect_bad_declaration(
      [](Partition& p, int rank, int ranks) {
        p.add("w", at::zeros({2}, rank == ranks - 1 ? at::kDouble : at::kFloat));
        if (ranks == 1) p.add("w", at::zeros({2}));  // one rank cannot disagree: a duplicate
      },
      "'w'");
}

TEST(Save, DifferentGlobalShapesFailEverywhere) {
  expect_bad_declaration(
      [](Partition& p, int rank, int ranks) {
        Shape global = rank == ranks - 1 ? Shape{ranks + 1, 4} : Shape{ranks, 4};
        p.add_shard("w", at::zeros({1, 4}), global, {rank, 0});
        if (ranks == 1) p.add_shard("w", at::zeros({1, 4}), {1, 4}, {0, 0});
      },
      "'w'");
}

TEST(Save, GapsAreRejected) {
  // Every rank holds one row of a tensor with one row more than there are ranks.
  expect_bad_declaration(
      [](Partition& p, int rank, int ranks) {
        p.add_shard("w", at::zeros({1, 4}), {ranks + 1, 4}, {rank, 0});
      },
      "'w'");
}

TEST(Save, OverlapsAreRejected) {
  expect_bad_declaration(
      [](Partition& p, int rank, int ranks) {
        if (ranks == 1) {
          // A box reaching outside its global shape is the one-rank form of this mistake.
          p.add_shard("w", at::zeros({2, 4}), {3, 4}, {2, 0});
        } else {
          p.add_shard("w", at::zeros({2, 4}), {ranks + 1, 4}, {rank, 0});
        }
      },
      "'w'");
}

TEST(Save, DuplicateKeysAreRejected) {
  expect_bad_declaration(
      [](Partition& p, int, int) {
        p.add("dup", at::zeros({2}));
        p.add("dup", at::ones({2}));
      },
      "'dup'");
}

TEST(Save, SplitGroupWithoutTheRankIsRejected) {
  expect_bad_declaration(
      [](Partition& p, int, int ranks) {
        p.add_split("s", at::zeros({2, 2}), 0, {ranks});
      },
      "'s'");
}

TEST(Save, ExistingCheckpointIsReplacedOnlyWhenAskedAndOnlyByACompleteOne) {
  SharedDir dir("save-atomic");
  std::string ckpt = dir.path + "/ckpt";
  Partition first;
  first.add("w", at::full({4}, 1.0));
  save(first, ckpt, MPI_COMM_WORLD);

  Partition second;
  second.add("w", at::full({4}, 2.0));
  std::string error = error_of<UsageError>([&] { save(second, ckpt, MPI_COMM_WORLD); });
  EXPECT_NE(error.find("already exists"), std::string::npos) << error;

  // A save that fails while writing (injected on the last rank) leaves the old one intact.
  setenv("SHARDLOAD_FAIL_AT", ("write:" + std::to_string(world_size() - 1)).c_str(), 1);
  error = error_of<Error>([&] { save(second, ckpt, MPI_COMM_WORLD, {.overwrite = true}); });
  unsetenv("SHARDLOAD_FAIL_AT");
  EXPECT_NE(error.find("injected"), std::string::npos) << error;
  Partition check;
  check.add("w", at::zeros({4}));
  load(check, ckpt, MPI_COMM_WORLD);
  EXPECT_TRUE(check.entries()[0].tensor.eq(1.0).all().item<bool>());
  barrier();
  // No staging directory is left behind.
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path)) ++entries;
  EXPECT_EQ(entries, 1);

  save(second, ckpt, MPI_COMM_WORLD, {.overwrite = true});
  load(check, ckpt, MPI_COMM_WORLD);
  EXPECT_TRUE(check.entries()[0].tensor.eq(2.0).all().item<bool>());
}

}  // namespace
}  // namespace shardload::testing
