// io/ without MPI: shard files (every dtype, 0-d, empty, hyperslabs, checksums, bad files), the
// manifest, and the staging/commit of checkpoint directories.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "core/error.h"
#include "io/checkpoint_dir.h"
#include "io/manifest.h"
#include "io/shard_file.h"

namespace shardload {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "shardload-io-XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { fs::remove_all(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<uint8_t> pattern(size_t n, int seed) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>((i * 131 + seed * 17) % 251);
  return v;
}

ChunkRecord whole(const std::string& key, DType dtype, Shape shape) {
  ChunkRecord r;
  r.key = key;
  r.dtype = dtype;
  r.global_shape = shape;
  r.offset.assign(shape.size(), 0);
  r.shape = shape;
  return r;
}

TEST(ShardFile, EveryDtypeZeroDAndEmptyRoundTripWithIndex) {
  TempDir dir;
  std::string path = dir.path() + "/" + shard_file_name(0, 1);
  EXPECT_EQ(shard_file_name(3, 12), "shard-00003-of-00012.h5");
  std::vector<std::pair<ChunkRecord, std::vector<uint8_t>>> written;
  {
    ShardWriter w(path, 0, 1);
    int seed = 0;
    for (DType dt :
         {DType::kFloat64, DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt64,
          DType::kInt32, DType::kInt16, DType::kInt8, DType::kUInt8, DType::kBool}) {
      for (Shape shape : {Shape{3, 4}, Shape{}, Shape{0, 5}}) {
        ChunkRecord r =
            whole(std::string(dtype_name(dt)) + "/" + shape_str(shape) + " ü.x", dt, shape);
        auto bytes = pattern(static_cast<size_t>(numel(shape) * dtype_size(dt)), ++seed);
        if (dt == DType::kBool) {
          for (auto& b : bytes) b &= 1;
        }
        if (dt == DType::kFloat16 || dt == DType::kFloat32 || dt == DType::kFloat64) {
          // Finite values only: NaN payloads are not guaranteed through float conversion.
          std::fill(bytes.begin(), bytes.end(), static_cast<uint8_t>(seed % 60));
        }
        r.order = seed;
        written.emplace_back(w.add(r, bytes.data()), bytes);
      }
    }
    w.finish();
  }
  ShardReader reader(path);
  auto rows = reader.read_index(7);
  ASSERT_EQ(rows.size(), written.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].file, 7);
    ChunkRecord expect = written[i].first;
    expect.file = 7;
    EXPECT_EQ(rows[i], expect);
    std::vector<uint8_t> back(written[i].second.size() + 1);
    reader.read_chunk(rows[i], back.data(), /*verify=*/true);
    EXPECT_EQ(0, std::memcmp(back.data(), written[i].second.data(), written[i].second.size()))
        << rows[i].key;
  }
}

TEST(ShardFile, HyperslabReadsOnlyTheBox) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  std::vector<int32_t> values(6 * 5);
  std::iota(values.begin(), values.end(), 0);
  {
    ShardWriter w(path, 0, 1);
    ChunkRecord r = whole("m", DType::kInt32, {6, 5});
    r.global_shape = {10, 5};
    r.offset = {4, 0};
    w.add(r, values.data());
    w.finish();
  }
  ShardReader reader(path);
  auto rows = reader.read_index(0);
  std::vector<int32_t> box(3 * 2);
  reader.read(rows[0], {2, 1}, {3, 2}, box.data(), /*verify=*/true);
  EXPECT_EQ(box, (std::vector<int32_t>{11, 12, 16, 17, 21, 22}));
}

TEST(ShardFile, ChecksumMismatchNamesFileAndKey) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  std::vector<double> values(16, 1.5);
  {
    ShardWriter w(path, 0, 1);
    w.add(whole("weights", DType::kFloat64, {16}), values.data());
    w.finish();
  }
  ShardReader reader(path);
  auto rows = reader.read_index(0);
  rows[0].checksum ^= 1;
  rows[0].block_checksums[0] ^= 1;
  std::vector<double> back(16);
  try {
    reader.read_chunk(rows[0], back.data(), /*verify=*/true);
    FAIL() << "expected a checksum error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("key 'weights'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("checksum mismatch"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(reader.read_chunk(rows[0], back.data(), /*verify=*/false));
}

TEST(ShardFile, MissingOrForeignFilesAreFormatErrorsNamingThePath) {
  TempDir dir;
  std::string missing = dir.path() + "/nope.h5";
  try {
    ShardReader r(missing);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos);
  }
  std::string text = dir.path() + "/text.h5";
  std::ofstream(text) << "not hdf5";
  try {
    ShardReader r(text);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("not an HDF5 file"), std::string::npos) << e.what();
  }
  // An HDF5 file that is not ours (a manifest is HDF5 but has no index).
  Manifest m;
  m.shard_files = {"x.h5"};
  write_manifest(dir.path(), m);
  ShardReader r(dir.path() + "/" + kManifestName);
  EXPECT_THROW(r.read_index(0), FormatError);
}

TEST(Manifest, RoundTripAndNotACheckpoint) {
  TempDir dir;
  Manifest m;
  m.library_version = "9.9";
  m.shard_files = {"shard-00000-of-00002.h5", "shard-00001-of-00002.h5"};
  m.shard_chunks = {3, 4};
  m.num_ranks = 2;
  m.created = "2026-01-01T00:00:00Z";
  m.metadata = {{"step", "100"}, {"note", "ünïcode"}};
  write_manifest(dir.path(), m);
  Manifest back = read_manifest(dir.path());
  EXPECT_EQ(back.shard_files, m.shard_files);
  EXPECT_EQ(back.shard_chunks, m.shard_chunks);
  EXPECT_EQ(back.num_ranks, 2);
  EXPECT_EQ(back.metadata, m.metadata);
  Manifest copy = deserialize_manifest(serialize_manifest(back));
  EXPECT_EQ(copy.metadata, m.metadata);

  TempDir empty;
  try {
    read_manifest(empty.path());
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("not a shardload checkpoint"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find(empty.path()), std::string::npos);
  }
  EXPECT_THROW(read_manifest(empty.path() + "/missing"), FormatError);
}

TEST(CheckpointDir, StagingCommitAndOverwriteKeepACompleteCheckpointAtThePath) {
  TempDir dir;
  std::string target = dir.path() + "/ckpt";
  EXPECT_NO_THROW(check_save_target(target, false));
  EXPECT_THROW(check_save_target(dir.path() + "/no/such/parent/ckpt", false), UsageError);

  auto make = [&](const std::string& marker) {
    std::string staging = make_staging_dir(target);
    EXPECT_NE(staging.find("/.ckpt.tmp-"), std::string::npos);
    Manifest m;
    m.metadata = {{"marker", marker}};
    write_manifest(staging, m);
    return staging;
  };
  commit_staging_dir(make("first"), target);
  EXPECT_EQ(read_manifest(target).metadata[0].second, "first");
  EXPECT_THROW(check_save_target(target, false), UsageError);
  EXPECT_NO_THROW(check_save_target(target, true));
  commit_staging_dir(make("second"), target);
  EXPECT_EQ(read_manifest(target).metadata[0].second, "second");
  // Only the checkpoint remains: the previous one and the staging directories are gone.
  int entries = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path())) ++entries;
  EXPECT_EQ(entries, 1);
  // A path holding something that is not a checkpoint is never replaced.
  std::string file = dir.path() + "/file";
  std::ofstream(file) << "x";
  EXPECT_THROW(check_save_target(file, true), UsageError);
}

}  // namespace
}  // namespace shardload
