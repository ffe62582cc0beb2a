// Resharding: a checkpoint saved by P ranks in one layout loads into Q ranks in another, bit for
// bit, for every P, Q up to the world size (the 4-rank run covers all 16 pairs); a checkpoint
// missing a chunk gives a missing key naming the uncovered region.
#include <filesystem>

#include "io/h5/manifest.h"
#include "io/h5/shard_file.h"
#include "loader/shardload.h"
#include "mpi_test_util.h"

namespace shardload::testing {
namespace {

/// Dims not divisible by the rank counts (7, 13, 5, 3), a 3-d tensor, bfloat16 and int32.
TensorList originals() {
  return {{"a.weight", make_tensor(11, at::kFloat, {7, 5})},
          {"b.weight", make_tensor(12, at::kBFloat16, {13, 6})},
          {"c.cube", make_tensor(13, at::kInt, {3, 5, 4})},
          {"d.row", make_tensor(14, at::kDouble, {1, 9})}};
}

struct Layout {
  const char* name;
  std::vector<SplitRule> rules;
};

const std::vector<Layout>& layouts() {
  static const std::vector<Layout> kLayouts = {
      {"replicated", {}},
      {"dim0", {{".", 0, {}}}},
      {"dim1", {{".", 1, {}}}},
      {"mixed", {{"^a", 1, {}}, {"^c", 0, {}}, {"^d", 1, {}}}},
  };
  return kLayouts;
}

/// A communicator of the first n ranks (MPI_COMM_NULL on the others).
MPI_Comm first_ranks(int n) {
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() < n ? 0 : MPI_UNDEFINED, world_rank(), &sub);
  return sub;
}

TEST(Reshard, EverySaveLayoutAndRankCountLoadsIntoEveryOther) {
  SharedDir dir("reshard");
  const int world = world_size();
  const TensorList full = originals();
  int checked = 0, wrong = 0;
  for (int p = 1; p <= world; ++p) {
    for (const auto& saved_layout : layouts()) {
      std::string ckpt = dir.path + "/p" + std::to_string(p) + "-" + saved_layout.name;
      MPI_Comm save_comm = first_ranks(p);
      if (save_comm != MPI_COMM_NULL) {
        int r = 0;
        MPI_Comm_rank(save_comm, &r);
        save(Partition::from_global(full, saved_layout.rules, r, p), ckpt, save_comm);
        MPI_Comm_free(&save_comm);
      }
      barrier();
      for (int q = 1; q <= world; ++q) {
        MPI_Comm load_comm = first_ranks(q);
        if (load_comm == MPI_COMM_NULL) continue;
        int r = 0;
        MPI_Comm_rank(load_comm, &r);
        for (const auto& load_layout : layouts()) {
          TensorList zeros;
          for (const auto& t : full) zeros.push_back({t.key, at::zeros_like(t.tensor)});
          Partition target = Partition::from_global(zeros, load_layout.rules, r, q);
          LoadResult result = load(target, ckpt, load_comm);
          Partition expect = Partition::from_global(full, load_layout.rules, r, q);
          for (size_t i = 0; i < full.size(); ++i) {
            ++checked;
            if (!same_bits(target.entries()[i].tensor, expect.entries()[i].tensor)) {
              ++wrong;
              ADD_FAILURE() << "saved by " << p << " ranks (" << saved_layout.name
                            << "), loaded by " << q << " (" << load_layout.name << "): rank " << r
                            << " key " << full[i].key;
            }
          }
          // Only the elements some rank needs are read, each once.
          EXPECT_EQ(result.bytes_read_total, result.bytes_needed_total);
          EXPECT_LE(result.bytes_read_total, 7 * 5 * 4 + 13 * 6 * 2 + 3 * 5 * 4 * 4 + 9 * 8);
        }
        MPI_Comm_free(&load_comm);
      }
    }
  }
  EXPECT_GT(checked, 0);
  EXPECT_EQ(wrong, 0);
}

TEST(Reshard, LoadingASliceReadsOnlyTheSlice) {
  // One rank saves a [64, 32] tensor whole; loaded split along dim 1, each rank reads its own
  // columns only (a hyperslab), and together they read the tensor once.
  SharedDir dir("slice");
  TensorList full = {{"w", make_tensor(3, at::kFloat, {64, 32})}};
  MPI_Comm one = first_ranks(1);
  if (one != MPI_COMM_NULL) {
    save(Partition::from_global(full, {}, 0, 1), dir.path + "/ckpt", one);
    MPI_Comm_free(&one);
  }
  barrier();
  TensorList zeros = {{"w", at::zeros({64, 32})}};
  Partition p = Partition::from_global(zeros, {{"w", 1, {}}}, world_rank(), world_size());
  LoadResult r = load(p, dir.path + "/ckpt", MPI_COMM_WORLD);
  int64_t mine = p.entries()[0].tensor.numel() * 4;
  EXPECT_EQ(r.bytes_read, mine);
  EXPECT_EQ(r.bytes_read_total, 64 * 32 * 4);
  Partition expect = Partition::from_global(full, {{"w", 1, {}}}, world_rank(), world_size());
  EXPECT_TRUE(same_bits(p.entries()[0].tensor, expect.entries()[0].tensor));
}

/// A checkpoint whose tensor "w" [6, 4] lacks its row 3, written file by file with io/.
std::string checkpoint_missing_a_chunk(const std::string& dir, const at::Tensor& w,
                                       const at::Tensor& b) {
  std::string ckpt = dir + "/holes";
  if (world_rank() == 0) {
    std::filesystem::create_directory(ckpt);
    ShardWriter writer(ckpt + "/" + shard_file_name(0, 1), 0, 1);
    auto add = [&](const std::string& key, const at::Tensor& t, Shape global, Shape offset) {
      ChunkRecord row;
      row.key = key;
      row.dtype = DType::kFloat32;
      row.global_shape = std::move(global);
      row.offset = std::move(offset);
      row.shape = Shape(t.sizes().begin(), t.sizes().end());
      at::Tensor c = t.contiguous();
      writer.add(row, c.data_ptr());
    };
    add("w", w.narrow(0, 0, 3), {6, 4}, {0, 0});
    add("w", w.narrow(0, 4, 2), {6, 4}, {4, 0});
    add("b", b, {4}, {0});
    writer.finish();
    Manifest m;
    m.shard_files = {shard_file_name(0, 1)};
    m.shard_chunks = {3};
    write_manifest(ckpt, m);
  }
  barrier();
  return ckpt;
}

TEST(Reshard, AMissingChunkIsAMissingKeyNamingTheRegion) {
  SharedDir dir("holes");
  at::Tensor w = make_tensor(21, at::kFloat, {6, 4});
  at::Tensor b = make_tensor(22, at::kFloat, {4});
  std::string ckpt = checkpoint_missing_a_chunk(dir.path, w, b);

  TensorList model = {{"w", at::full({6, 4}, -1.0)}, {"b", at::zeros({4})}};
  Partition p = Partition::from_global(model, {{"^w$", 0, {}}}, world_rank(), world_size());
  at::Tensor w_before = p.entries()[0].tensor.clone();
  try {
    load(p, ckpt, MPI_COMM_WORLD);
    ADD_FAILURE() << "strict load must fail";
  } catch (const LoadVerdictError& e) {
    EXPECT_EQ(e.result().missing_keys, std::vector<std::string>{"w"});
    ASSERT_EQ(e.result().uncovered.size(), 1u);  // only the rank whose rows include row 3
    EXPECT_EQ(e.result().uncovered[0].region, (Box{{3, 0}, {1, 4}}));
    EXPECT_NE(std::string(e.what()).find("\"w\"[3:4, 0:4]"), std::string::npos) << e.what();
    EXPECT_TRUE(same_on_all_ranks(e.what()));
  }
  LoadResult r = load(p, ckpt, MPI_COMM_WORLD, {.strict = false});
  EXPECT_EQ(r.missing_keys, std::vector<std::string>{"w"});
  // The uncovered tensor keeps its values on every rank (never silently zero); b is loaded.
  EXPECT_TRUE(same_bits(p.entries()[0].tensor, w_before));
  EXPECT_TRUE(same_bits(p.entries()[1].tensor, b));
}

}  // namespace
}  // namespace shardload::testing
