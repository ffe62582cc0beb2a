// Collective errors: a failure on one rank in any phase — injected (as PyTorch's DCP tests do)
// or real (a missing shard file, a corrupt chunk, a bad index, not a checkpoint) — becomes the
// same error on every rank, naming rank, file and key; nothing hangs (CTest's timeout guards).
#include <hdf5.h>

#include <filesystem>

#include "io/h5/shard_file.h"
#include "loader/shardload.h"
#include "mpi_test_util.h"

namespace shardload::testing {
namespace {

namespace fs = std::filesystem;

struct Saved {
  SharedDir dir{"fail"};
  std::string ckpt = dir.path + "/ckpt";
  TensorList full = {{"a", make_tensor(1, at::kFloat, {16, 4})},
                     {"b", make_tensor(2, at::kFloat, {5})},
                     {"c", make_tensor(3, at::kDouble, {3, 3})}};
  Saved() {
    save(Partition::from_global(full, {{"^a$", 0, {}}}, world_rank(), world_size()), ckpt,
         MPI_COMM_WORLD);
  }
  Partition fresh() const {
    TensorList zeros;
    for (const auto& t : full) zeros.push_back({t.key, at::zeros_like(t.tensor)});
    return Partition::from_global(zeros, {{"^a$", 0, {}}}, world_rank(), world_size());
  }
};

/// Runs a load with SHARDLOAD_FAIL_AT=phase:rank on every rank and returns the error text.
std::string load_failing_at(const Saved& s, Partition& p, const std::string& phase, int rank) {
  setenv("SHARDLOAD_FAIL_AT", (phase + ":" + std::to_string(rank)).c_str(), 1);
  std::string error = error_of<Error>([&] { load(p, s.ckpt, MPI_COMM_WORLD); });
  unsetenv("SHARDLOAD_FAIL_AT");
  return error;
}

TEST(Failure, InjectedInEveryLoadPhaseOnRankZeroAndLastRank) {
  Saved s;
  for (const char* phase : {"open", "index", "plan", "transfer"}) {
    for (int rank : {0, world_size() - 1}) {
      Partition p = s.fresh();
      std::string error = load_failing_at(s, p, phase, rank);
      EXPECT_NE(error.find("phase '" + std::string(phase) + "'"), std::string::npos) << error;
      EXPECT_NE(error.find("rank " + std::to_string(rank) + ": injected"), std::string::npos)
          << error;
      EXPECT_TRUE(same_on_all_ranks(error)) << error;
      // The injection comes before the phase's work: no tensor has changed.
      for (const auto& e : p.entries()) {
        EXPECT_TRUE(same_bits(e.tensor, at::zeros_like(e.tensor))) << phase << " " << e.key;
      }
    }
  }
}

TEST(Failure, InjectedReadFailureMidTransferStillEndsTogether) {
  // A reader failing while messages move: it keeps delivering (flagged), every rank reaches the
  // end of the plan, and all throw the reader's error.
  Saved s;
  for (int rank : {0, world_size() - 1}) {
    Partition p = s.fresh();
    std::string error = load_failing_at(s, p, "read", rank);
    EXPECT_NE(error.find("phase 'transfer'"), std::string::npos) << error;
    EXPECT_NE(error.find("rank " + std::to_string(rank) + ": injected"), std::string::npos)
        << error;
    EXPECT_TRUE(same_on_all_ranks(error)) << error;
  }
}

TEST(Failure, InjectedInEverySavePhase) {
  SharedDir dir("fail-save");
  Partition p;
  p.add("w", make_tensor(1, at::kFloat, {4, 4}));
  for (const char* phase : {"declare", "plan", "prepare", "write", "commit"}) {
    // Rank 0 alone writes the manifest and renames (commit); every rank takes part before.
    int rank = std::string(phase) == "commit" ? 0 : world_size() - 1;
    setenv("SHARDLOAD_FAIL_AT", (std::string(phase) + ":" + std::to_string(rank)).c_str(), 1);
    std::string error = error_of<Error>([&] { save(p, dir.path + "/ckpt", MPI_COMM_WORLD); });
    unsetenv("SHARDLOAD_FAIL_AT");
    EXPECT_NE(error.find("phase '" + std::string(phase) + "'"), std::string::npos) << error;
    EXPECT_TRUE(same_on_all_ranks(error)) << error;
    barrier();
    EXPECT_TRUE(fs::is_empty(dir.path)) << "a failed save left files (phase " << phase << ")";
    barrier();
  }
}

TEST(Failure, MissingShardFileIsNamedOnEveryRank) {
  Saved s;
  std::string victim = s.ckpt + "/" + shard_file_name(world_size() - 1, world_size());
  barrier();
  if (world_rank() == 0) fs::remove(victim);
  barrier();
  Partition p = s.fresh();
  std::string error = error_of<FormatError>([&] { load(p, s.ckpt, MPI_COMM_WORLD); });
  EXPECT_NE(error.find(victim), std::string::npos) << error;
  EXPECT_NE(error.find("rank " + std::to_string(world_size() - 1)), std::string::npos) << error;
  EXPECT_TRUE(same_on_all_ranks(error));
}

/// Flips one byte of `key`'s stored data in whichever shard holds it (rank 0; all ranks wait).
void corrupt(const std::string& ckpt, const std::string& key, uint64_t byte = 3) {
  std::string file, dataset;
  uint64_t data_offset = 0;  // of a packed chunk, inside its dataset
  if (world_rank() == 0) {
    CheckpointInfo info = read_checkpoint_info(ckpt);
    for (const auto& row : info.index) {
      if (row.key != key) continue;
      file = ckpt + "/" + info.manifest.shard_files[static_cast<size_t>(row.file)];
      dataset = row.dataset;
      data_offset = row.data_offset;
    }
    hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, dataset.c_str(), H5P_DEFAULT);
    haddr_t offset = H5Dget_offset(d) + data_offset;
    H5Dclose(d);
    H5Fclose(f);
    flip_byte(file, offset + byte);
  }
  barrier();
}

TEST(Failure, CorruptChunkIsNamedWithFileAndKey) {
  Saved s;
  corrupt(s.ckpt, "c");
  Partition p = s.fresh();
  std::string error = error_of<FormatError>([&] { load(p, s.ckpt, MPI_COMM_WORLD); });
  EXPECT_NE(error.find("checksum mismatch"), std::string::npos) << error;
  EXPECT_NE(error.find("key 'c'"), std::string::npos) << error;
  EXPECT_NE(error.find("shard-"), std::string::npos) << error;
  EXPECT_TRUE(same_on_all_ranks(error));
  // The corrupt tensor was not written into.
  EXPECT_TRUE(same_bits(p.entries()[2].tensor, at::zeros({3, 3}, at::kDouble)));
  if (world_rank() == 0) {
    VerifyReport report = verify_checkpoint(s.ckpt);
    ASSERT_EQ(report.problems.size(), 1u);
    EXPECT_NE(report.problems[0].find("key 'c'"), std::string::npos);
  }
}

TEST(Failure, BadIndexIsNamedWithFileAndKey) {
  Saved s;
  std::string file = s.ckpt + "/" + shard_file_name(0, world_size());
  if (world_rank() == 0) {
    // Rewrite the dtype column with a dtype the format does not know.
    hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    hid_t g = H5Gopen2(f, "index", H5P_DEFAULT);
    hid_t d = H5Dopen2(g, "dtype", H5P_DEFAULT);
    hid_t space = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(space);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    std::vector<const char*> values(static_cast<size_t>(n), "float8");
    H5Dwrite(d, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data());
    H5Tclose(type);
    H5Sclose(space);
    H5Dclose(d);
    H5Gclose(g);
    H5Fclose(f);
  }
  barrier();
  Partition p = s.fresh();
  std::string error = error_of<FormatError>([&] { load(p, s.ckpt, MPI_COMM_WORLD); });
  EXPECT_NE(error.find(file), std::string::npos) << error;
  EXPECT_NE(error.find("unknown dtype 'float8'"), std::string::npos) << error;
  EXPECT_NE(error.find("rank 0"), std::string::npos) << error;
  EXPECT_TRUE(same_on_all_ranks(error));
}

TEST(Failure, NoByteOfTheMessageWhoseChunkFailedLands) {
  // A 4 MiB tensor in four 1 MiB messages, one checksum block each; the last block corrupt.
  // Whatever landed before the failure was found, none of the corrupt message's bytes did, on
  // any rank (the reader lands its own copy right after its read: only after the check).
  SharedDir dir("failing-message");
  const std::string ckpt = dir.path + "/ckpt";
  const TensorList full = {{"big", make_tensor(11, at::kFloat, {1024, 1024})}};
  save(Partition::from_global(full, {}, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  corrupt(ckpt, "big", (3u << 20) + 5);
  Partition p;
  p.add("big", at::zeros({1024, 1024}));
  const std::string error = error_of<FormatError>(
      [&] { load(p, ckpt, MPI_COMM_WORLD, LoadOptions{.message_bytes = 1 << 20}); });
  EXPECT_NE(error.find("checksum mismatch"), std::string::npos) << error;
  EXPECT_NE(error.find("key 'big'"), std::string::npos) << error;
  EXPECT_TRUE(same_on_all_ranks(error));
  const at::Tensor& t = p.entries()[0].tensor;
  EXPECT_EQ(t.narrow(0, 768, 256).count_nonzero().item<int64_t>(), 0);
}

TEST(Failure, NotACheckpointIsNamedOnEveryRank) {
  SharedDir dir("not-ckpt");
  Partition p;
  p.add("w", at::zeros({2}));
  std::string error = error_of<FormatError>([&] { load(p, dir.path, MPI_COMM_WORLD); });
  EXPECT_NE(error.find(dir.path), std::string::npos) << error;
  EXPECT_NE(error.find("not a shardload checkpoint"), std::string::npos) << error;
  EXPECT_TRUE(same_on_all_ranks(error));
  std::string missing = dir.path + "/does-not-exist";
  error = error_of<FormatError>([&] { load(p, missing, MPI_COMM_WORLD); });
  EXPECT_NE(error.find(missing), std::string::npos) << error;
}

TEST(ReadInPlace, SameBytesAsStagedReadsAndACorruptChunkFailsEverywhere) {
  SharedDir dir("in-place");
  const std::string ckpt = dir.path + "/ckpt";
  // 2 MiB replicated (one piece: delivered in two steps at several ranks, local at one), a split
  // tensor (each rank reads its own part), small ones packed together (never in place).
  const TensorList full = {{"big", make_tensor(7, at::kFloat, {512, 1024})},
                           {"split", make_tensor(8, at::kFloat, {64, 1024})},
                           {"small", make_tensor(9, at::kDouble, {3})}};
  const std::vector<SplitRule> rules = {{"^split$", 0, {}}};
  save(Partition::from_global(full, rules, world_rank(), world_size()), ckpt, MPI_COMM_WORLD);
  auto fresh = [&] {
    TensorList zeros;
    for (const auto& t : full) zeros.push_back({t.key, at::zeros_like(t.tensor)});
    return Partition::from_global(zeros, rules, world_rank(), world_size());
  };
  LoadOptions in_place;
  in_place.read_in_place = true;
  Partition staged = fresh(), direct = fresh();
  const LoadResult a = load(staged, ckpt, MPI_COMM_WORLD);
  const LoadResult b = load(direct, ckpt, MPI_COMM_WORLD, in_place);
  for (size_t i = 0; i < full.size(); ++i) {
    EXPECT_TRUE(same_bits(staged.entries()[i].tensor, direct.entries()[i].tensor)) << i;
  }
  EXPECT_EQ(b.bytes_read, a.bytes_read);
  EXPECT_EQ(b.bytes_needed_total, a.bytes_needed_total);

  // A corrupt chunk read in place: the same error everywhere; the reader's tensor holds the
  // bytes it read (the guarantee given up), every other rank's is untouched. Read staged, no
  // rank's is touched.
  corrupt(ckpt, "big");
  auto touched_ranks = [&](const LoadOptions& options) {
    Partition p = fresh();
    const std::string error =
        error_of<FormatError>([&] { load(p, ckpt, MPI_COMM_WORLD, options); });
    EXPECT_NE(error.find("checksum mismatch"), std::string::npos) << error;
    EXPECT_NE(error.find("key 'big'"), std::string::npos) << error;
    EXPECT_TRUE(same_on_all_ranks(error));
    int touched = p.entries()[0].tensor.count_nonzero().item<int64_t>() > 0 ? 1 : 0, total = 0;
    MPI_Allreduce(&touched, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    return total;
  };
  EXPECT_EQ(touched_ranks(in_place), 1);
  EXPECT_EQ(touched_ranks(LoadOptions{}), 0);
}

}  // namespace
}  // namespace shardload::testing
