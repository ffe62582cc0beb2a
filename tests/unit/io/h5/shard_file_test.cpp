// io/ without MPI: shard files (every dtype, 0-d, empty, hyperslabs, checksums, bad files), the
// manifest, and the staging/commit of checkpoint directories.
#include "io/h5/shard_file.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <thread>

#include "core/error.h"
#include "io/commit/checkpoint_dir.h"
#include "io/file_bytes.h"
#include "io/h5/manifest.h"
#include "tests/unit/temp_dir.h"

namespace shardload {
namespace {

namespace fs = std::filesystem;

using shardload::test_util::TempDir;

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
    // std::equal, not memcmp: an empty chunk's vector has a null data() (UBSan flags memcmp).
    EXPECT_TRUE(std::equal(written[i].second.begin(), written[i].second.end(), back.begin()))
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

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

/// The file position of `bytes` (which must occur once) in the file.
size_t position_of(const std::string& path, const std::vector<uint8_t>& bytes) {
  const std::string file = read_file(path);
  auto same = [](char a, uint8_t b) { return static_cast<uint8_t>(a) == b; };
  auto it = std::search(file.begin(), file.end(), bytes.begin(), bytes.end(), same);
  EXPECT_NE(it, file.end());
  if (it == file.end()) return 0;
  EXPECT_EQ(std::search(it + 1, file.end(), bytes.begin(), bytes.end(), same), file.end());
  return static_cast<size_t>(it - file.begin());
}

void flip_byte(const std::string& path, size_t pos) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(pos));
  char c = 0;
  f.read(&c, 1);
  c = static_cast<char>(c ^ 0x5a);
  f.seekp(static_cast<std::streamoff>(pos));
  f.write(&c, 1);
}

/// int32 values that make every 4-byte group of the file unique (so the test finds them).
std::vector<uint8_t> unique_ints(size_t n, uint32_t seed) {
  std::vector<uint8_t> bytes(n * 4);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t v = 0x7a000000u + seed * 0x10000u + static_cast<uint32_t>(i);
    std::memcpy(bytes.data() + 4 * i, &v, 4);
  }
  return bytes;
}

/// The bytes of box (offset, shape) of a C-order chunk of `chunk` shape.
std::vector<uint8_t> box_of(const std::vector<uint8_t>& data, const Shape& chunk,
                            const Shape& offset, const Shape& shape, size_t elem) {
  std::vector<uint8_t> out;
  const int64_t n = numel(shape);
  Shape at(shape.size(), 0);
  for (int64_t k = 0; k < n; ++k) {
    int64_t lin = 0;
    for (size_t d = 0; d < chunk.size(); ++d) lin = lin * chunk[d] + offset[d] + at[d];
    out.insert(out.end(), data.begin() + lin * elem, data.begin() + (lin + 1) * elem);
    for (size_t d = shape.size(); d-- > 0;) {
      if (++at[d] < shape[d]) break;
      at[d] = 0;
    }
  }
  return out;
}

/// Whether the box reads any byte of block `block` (of `block_bytes`) of the chunk.
bool touches_block(const Shape& chunk, const Shape& offset, const Shape& shape, size_t elem,
                   uint64_t block_bytes, uint64_t block) {
  const int64_t n = numel(shape);
  Shape at(shape.size(), 0);
  for (int64_t k = 0; k < n; ++k) {
    int64_t lin = 0;
    for (size_t d = 0; d < chunk.size(); ++d) lin = lin * chunk[d] + offset[d] + at[d];
    const uint64_t lo = static_cast<uint64_t>(lin) * elem, hi = lo + elem - 1;
    if (lo / block_bytes <= block && block <= hi / block_bytes) return true;
    for (size_t d = shape.size(); d-- > 0;) {
      if (++at[d] < shape[d]) break;
      at[d] = 0;
    }
  }
  return false;
}

/// Boxes of a 2-D chunk: whole, rows, columns, single elements, random ones.
std::vector<std::pair<Shape, Shape>> boxes_of(const Shape& chunk, int random, uint32_t seed) {
  std::vector<std::pair<Shape, Shape>> out = {
      {{0, 0}, chunk},
      {{0, 0}, {1, 1}},
      {{chunk[0] - 1, chunk[1] - 1}, {1, 1}},
      {{3, 0}, {5, chunk[1]}},
      {{0, 2}, {chunk[0], 1}},
      {{0, 1}, {chunk[0], chunk[1] - 2}},
      {{chunk[0] / 2, 0}, {chunk[0] - chunk[0] / 2, chunk[1]}},
      {{2, 3}, {0, 4}},
  };
  std::mt19937 g(seed);
  for (int i = 0; i < random; ++i) {
    Shape off(2), shape(2);
    for (int d = 0; d < 2; ++d) {
      off[d] = std::uniform_int_distribution<int64_t>(0, chunk[d] - 1)(g);
      shape[d] = std::uniform_int_distribution<int64_t>(1, chunk[d] - off[d])(g);
    }
    out.emplace_back(off, shape);
  }
  return out;
}

TEST(ShardFile, PacksSmallChunksAndKeepsLargeOnesInDatasetsOfTheirOwn) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  ShardWriterOptions options{.block_bytes = 64, .pack_threshold = 256, .pack_bytes = 1024};
  std::vector<std::pair<ChunkRecord, std::vector<uint8_t>>> written;
  {
    ShardWriter w(path, 0, 1, options);
    int seed = 0;
    for (int64_t n : {10, 1, 0, 100, 60, 63, 64, 200, 60, 60, 1, 2, 30}) {
      ChunkRecord r = whole("k" + std::to_string(seed), DType::kInt32, {n});
      auto bytes = unique_ints(static_cast<size_t>(n), static_cast<uint32_t>(++seed));
      written.emplace_back(w.add(r, bytes.data()), bytes);
    }
    w.finish();
  }
  // 40, 4 and 0 bytes packed; 400 own; 240 and 252 packed; 256 and 800 own; 240, 240 and 4
  // packed; 8 more would pass 1024 bytes: a second pack.
  std::vector<std::string> datasets;
  std::vector<uint64_t> offsets;
  for (const auto& [row, bytes] : written) {
    datasets.push_back(row.dataset);
    offsets.push_back(row.data_offset);
    EXPECT_EQ(row.block_checksums.size(), (row.nbytes + 63) / 64) << row.key;
  }
  EXPECT_EQ(datasets,
            (std::vector<std::string>{"/packed/0", "/packed/0", "/packed/0", "/data/0", "/packed/0",
                                      "/packed/0", "/data/1", "/data/2", "/packed/0", "/packed/0",
                                      "/packed/0", "/packed/1", "/packed/1"}));
  EXPECT_EQ(offsets, (std::vector<uint64_t>{0, 40, 44, 0, 44, 284, 0, 0, 536, 776, 1016, 0, 8}));
  ShardReader reader(path);
  EXPECT_EQ(reader.format_version(), 2);
  auto rows = reader.read_index(0);
  ASSERT_EQ(rows.size(), written.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i], written[i].first);
    std::vector<uint8_t> back(written[i].second.size());
    reader.read_chunk(rows[i], back.data(), /*verify=*/true);
    EXPECT_EQ(back, written[i].second) << rows[i].key;
    if (rows[i].shape[0] > 3) {
      std::vector<uint8_t> part(8);
      reader.read(rows[i], {2}, {2}, part.data(), /*verify=*/true);
      EXPECT_TRUE(std::equal(part.begin(), part.end(), written[i].second.begin() + 8));
    }
  }
}

TEST(ShardFile, BoxReadsVerifyExactlyTheBlocksTheyTouch) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  const Shape chunk = {24, 20};
  const auto data = unique_ints(24 * 20, 1);  // 1920 bytes: 30 blocks of 64
  {
    ShardWriter w(path, 0, 1, {.block_bytes = 64, .pack_threshold = 0});
    w.add(whole("grid", DType::kInt32, chunk), data.data());
    w.finish();
  }
  const auto boxes = boxes_of(chunk, 60, 7);
  ShardReader reader(path);
  auto rows = reader.read_index(0);
  for (const auto& [off, shape] : boxes) {
    std::vector<uint8_t> got(static_cast<size_t>(numel(shape) * 4));
    reader.read(rows[0], off, shape, got.data(), /*verify=*/true);
    EXPECT_EQ(got, box_of(data, chunk, off, shape, 4)) << shape_str(off) << shape_str(shape);
  }
  const size_t at = position_of(path, data);
  for (uint64_t corrupt : {0ull, 700ull, 1919ull}) {
    flip_byte(path, at + corrupt);
    ShardReader bad(path);
    const uint64_t block = corrupt / 64;
    const std::string range =
        "bytes [" + std::to_string(block * 64) + ", " + std::to_string(block * 64 + 64) + ")";
    int failed = 0;
    for (const auto& [off, shape] : boxes) {
      SCOPED_TRACE(shape_str(off) + shape_str(shape) + " corrupt byte " + std::to_string(corrupt));
      std::vector<uint8_t> got(static_cast<size_t>(numel(shape) * 4));
      const bool touches = touches_block(chunk, off, shape, 4, 64, block);
      try {
        bad.read(rows[0], off, shape, got.data(), /*verify=*/true);
        EXPECT_FALSE(touches) << "a corrupt block was read without an error";
        EXPECT_EQ(got, box_of(data, chunk, off, shape, 4));
      } catch (const FormatError& e) {
        ++failed;
        const std::string what = e.what();
        EXPECT_TRUE(touches) << what;
        EXPECT_NE(what.find(path), std::string::npos) << what;
        EXPECT_NE(what.find("key 'grid'"), std::string::npos) << what;
        EXPECT_NE(what.find(range), std::string::npos) << what;
        EXPECT_NE(what.find("checksum mismatch"), std::string::npos) << what;
      }
      EXPECT_NO_THROW(bad.read(rows[0], off, shape, got.data(), /*verify=*/false));
    }
    EXPECT_GT(failed, 0);
    flip_byte(path, at + corrupt);  // undo
  }
}

TEST(ShardFile, PartialReadsOfChunksWithoutBlockChecksumsStillVerify) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  const Shape chunk = {24, 20};
  const auto data = unique_ints(24 * 20, 2);
  {
    ShardWriter w(path, 0, 1, {.block_bytes = 0, .pack_threshold = 0});
    w.add(whole("plain", DType::kInt32, chunk), data.data());
    w.finish();
  }
  ShardReader reader(path);
  auto rows = reader.read_index(0);
  EXPECT_EQ(rows[0].block_bytes, 0u);
  EXPECT_TRUE(rows[0].block_checksums.empty());
  const auto boxes = boxes_of(chunk, 20, 3);
  for (const auto& [off, shape] : boxes) {
    std::vector<uint8_t> got(static_cast<size_t>(numel(shape) * 4));
    reader.read(rows[0], off, shape, got.data(), /*verify=*/true);
    EXPECT_EQ(got, box_of(data, chunk, off, shape, 4));
  }
  flip_byte(path, position_of(path, data) + 1900);  // far from most boxes
  ShardReader bad(path);
  for (const auto& [off, shape] : boxes) {
    if (numel(shape) == 0) continue;
    std::vector<uint8_t> got(static_cast<size_t>(numel(shape) * 4));
    try {
      bad.read(rows[0], off, shape, got.data(), /*verify=*/true);
      ADD_FAILURE() << "a partial read of a corrupt chunk passed: " << shape_str(off)
                    << shape_str(shape);
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("bytes [0, 1920) of chunk /data/0"), std::string::npos)
          << e.what();
    }
    EXPECT_NO_THROW(bad.read(rows[0], off, shape, got.data(), /*verify=*/false));
  }
}

TEST(ShardFile, VerifyChunkChecksBlocksAndTheWholeChunk) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  const auto data = unique_ints(1000, 3);
  {
    ShardWriter w(path, 0, 1, {.block_bytes = 512, .pack_threshold = 0});
    w.add(whole("w", DType::kInt32, {1000}), data.data());
    w.finish();
  }
  ShardReader reader(path);
  auto rows = reader.read_index(0);
  ASSERT_EQ(rows[0].block_checksums.size(), 8u);
  EXPECT_NO_THROW(reader.verify_chunk(rows[0]));
  auto lying_chunk = rows[0];
  lying_chunk.checksum ^= 1;  // the blocks are right: reads pass, verify does not
  std::vector<uint8_t> back(4000);
  EXPECT_NO_THROW(reader.read_chunk(lying_chunk, back.data(), true));
  EXPECT_THROW(reader.verify_chunk(lying_chunk), FormatError);
  auto lying_block = rows[0];
  lying_block.block_checksums[3] ^= 1;
  try {
    reader.verify_chunk(lying_block);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("bytes [1536, 2048)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("block 3 of 8"), std::string::npos) << e.what();
  }
  std::vector<uint8_t> part(400);
  EXPECT_NO_THROW(reader.read(lying_block, {0}, {100}, part.data(), true));  // blocks 0
  EXPECT_THROW(reader.read(lying_block, {400}, {100}, part.data(), true), FormatError);
  auto short_blocks = rows[0];
  short_blocks.block_checksums.pop_back();
  EXPECT_THROW(reader.read_chunk(short_blocks, back.data(), true), FormatError);
}

TEST(ShardFile, BoolBytesOtherThanZeroAndOneAreFormatErrors) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  std::vector<uint8_t> bools = {0, 1, 1, 2, 0};
  {
    ShardWriter w(path, 0, 1);
    w.add(whole("flags", DType::kBool, {5}), bools.data());
    w.finish();
  }
  ShardReader reader(path);
  auto rows = reader.read_index(0);
  std::vector<uint8_t> back(5);
  for (bool verify : {true, false}) {
    try {
      reader.read_chunk(rows[0], back.data(), verify);
      FAIL();
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find("byte value 2"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("key 'flags'"), std::string::npos) << e.what();
    }
  }
  EXPECT_NO_THROW(reader.read(rows[0], {0}, {3}, back.data(), true));
  EXPECT_THROW(reader.read(rows[0], {2}, {2}, back.data(), true), FormatError);
}

/// A file with packed, own-dataset and multi-block chunks, 1-D and 2-D.
std::vector<std::pair<ChunkRecord, std::vector<uint8_t>>> write_mixed(const std::string& path) {
  std::vector<std::pair<ChunkRecord, std::vector<uint8_t>>> written;
  ShardWriter w(path, 0, 1, {.block_bytes = 256, .pack_threshold = 1024, .pack_bytes = 8192});
  for (uint32_t i = 0; i < 240; ++i) {
    const Shape shape = i % 40 == 0 ? Shape{40, 30} : Shape{3, 1 + i % 17};
    auto bytes = unique_ints(static_cast<size_t>(numel(shape)), i + 10);
    written.emplace_back(w.add(whole("t" + std::to_string(i), DType::kInt32, shape), bytes.data()),
                         bytes);
  }
  w.finish();
  return written;
}

TEST(ShardFile, PreparedRowsAreReadConcurrentlyFromFourThreads) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  const auto written = write_mixed(path);
  ShardReader reader(path);
  auto rows = reader.read_index(0);
  for (const auto& r : rows) reader.prepare(r);
  std::atomic<int> wrong{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        for (size_t k = 0; k < rows.size(); ++k) {
          const size_t i = (k * 7 + static_cast<size_t>(t) * 13 + round) % rows.size();
          const auto& [row, bytes] = written[i];
          try {
            std::vector<uint8_t> got(bytes.size());
            reader.read_chunk(rows[i], got.data(), true);
            if (got != bytes) ++wrong;
            const Shape off = {1, 0}, shape = {row.shape[0] - 1, 1};
            std::vector<uint8_t> part(static_cast<size_t>(numel(shape) * 4));
            reader.read(rows[i], off, shape, part.data(), true);
            if (part != box_of(bytes, row.shape, off, shape, 4)) ++wrong;
          } catch (const std::exception&) {
            ++errors;
          }
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(errors.load(), 0);
}

TEST(ShardFile, ReadChunksReadsChunksAdjacentInTheFileWithOneRead) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  const auto written = write_mixed(path);
  ShardReader reader(path);
  auto rows = reader.read_index(0);
  auto read_all = [&](const std::vector<size_t>& order) {
    std::vector<const ChunkRecord*> ptrs;
    std::vector<uint8_t> expect;
    for (size_t i : order) {
      ptrs.push_back(&rows[i]);
      expect.insert(expect.end(), written[i].second.begin(), written[i].second.end());
    }
    std::vector<uint8_t> got(expect.size());
    const uint64_t before = reader.read_calls();
    reader.read_chunks(ptrs, got.data(), true);
    EXPECT_EQ(got, expect);
    return reader.read_calls() - before;
  };
  for (const auto& r : rows) reader.prepare(r);
  // Chunks 1..39 are packed back to back in one dataset: one read.
  std::vector<size_t> run(39);
  std::iota(run.begin(), run.end(), 1);
  EXPECT_EQ(read_all(run), 1u);
  // In reverse order no two are adjacent: one read each.
  std::reverse(run.begin(), run.end());
  EXPECT_EQ(read_all(run), 39u);
  // A chunk of its own in between breaks the run: 0 is own, 1..39 packed, 40 own, ...
  std::vector<size_t> mixed = {1, 2, 3, 0, 4, 5};
  EXPECT_EQ(read_all(mixed), 3u);
  std::vector<size_t> everything(rows.size());
  std::iota(everything.begin(), everything.end(), 0);
  EXPECT_LT(read_all(everything), 60u);
  // A bad checksum names the chunk's key.
  auto lying = rows[5];
  lying.block_checksums[0] ^= 1;
  std::vector<const ChunkRecord*> ptrs = {&rows[4], &lying, &rows[6]};
  std::vector<uint8_t> got(rows[4].nbytes + rows[5].nbytes + rows[6].nbytes);
  try {
    reader.read_chunks(ptrs, got.data(), true);
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("key 't5'"), std::string::npos) << e.what();
  }
  EXPECT_NO_THROW(reader.read_chunks(ptrs, got.data(), false));
}

TEST(ShardFile, AnInMemoryImageReadsLikeTheFile) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  const auto written = write_mixed(path);
  ShardReader from_file(path);
  ShardReader image("image-of-s.h5", read_file(path));
  auto rows = image.read_index(0);
  EXPECT_EQ(rows, from_file.read_index(0));
  for (size_t i = 0; i < rows.size(); i += 7) {
    std::vector<uint8_t> got(written[i].second.size());
    image.read_chunk(rows[i], got.data(), true);
    EXPECT_EQ(got, written[i].second);
  }
  try {
    ShardReader bad("garbage-image", std::string(1000, 'x'));
    FAIL();
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("garbage-image"), std::string::npos) << e.what();
  }
  Manifest m;
  m.shard_files = {"a.h5", "b.h5"};
  m.shard_chunks = {1, 2};
  write_manifest(dir.path(), m);
  EXPECT_EQ(read_manifest_image("m", read_file(dir.path() + "/" + kManifestName)).shard_files,
            m.shard_files);
}

TEST(FileBytes, DirectIoReadsTheSameBytesAsBufferedReadsAtAnyAlignment) {
  TempDir dir;
  const std::string path = dir.path() + "/bytes";
  const auto data = unique_ints((size_t{20} << 20) / 4 + 1001, 5);  // 20 MiB + 4004 bytes
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(data.data()),
              static_cast<std::streamsize>(data.size()));
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  FileBytes bytes = FileBytes::from_descriptor(fd, path);
  EXPECT_FALSE(bytes.direct_io());
  if (!bytes.enable_direct_io()) GTEST_SKIP() << "the temp directory refuses O_DIRECT (tmpfs?)";
  ASSERT_TRUE(bytes.direct_io());
  // Unaligned starts and ends, windows larger than the bounce buffer, the file's unaligned end.
  const std::vector<std::pair<uint64_t, size_t>> ranges = {
      {0, size_t{1} << 20},    {1, (size_t{1} << 20) + 3}, {4095, 9'000'001},
      {4096, size_t{8} << 20}, {12'345, 17'000'000},       {data.size() - 2'000'007, 2'000'007}};
  for (const auto& [pos, n] : ranges) {
    std::vector<uint8_t> got(n);
    bytes.read_at(pos, n, got.data());
    EXPECT_TRUE(std::equal(got.begin(), got.end(), data.begin() + static_cast<ptrdiff_t>(pos)))
        << pos << "+" << n;
  }
  EXPECT_TRUE(bytes.direct_io()) << "the kernel refused a direct read";
  std::vector<uint8_t> past(16);
  EXPECT_THROW(bytes.read_at(data.size() - 8, 16, past.data()), FormatError);
}

TEST(ShardFile, DirectIoReadsVerifyLikeBufferedReads) {
  TempDir dir;
  std::string path = dir.path() + "/s.h5";
  const Shape chunk = {1000, 777};  // 3,108,000 bytes: 3 blocks of 1 MiB, unaligned
  const auto data = unique_ints(1000 * 777, 9);
  {
    ShardWriter w(path, 0, 1);
    w.add(whole("big", DType::kInt32, chunk), data.data());
    w.finish();
  }
  ShardReader reader(path);
  if (!reader.enable_direct_io()) GTEST_SKIP() << "the temp directory refuses O_DIRECT (tmpfs?)";
  auto rows = reader.read_index(0);
  std::vector<uint8_t> got(data.size());
  reader.read_chunk(rows[0], got.data(), /*verify=*/true);
  EXPECT_EQ(got, data);
  const Shape off = {100, 5}, shape = {800, 700};
  std::vector<uint8_t> box(static_cast<size_t>(numel(shape) * 4));
  reader.read(rows[0], off, shape, box.data(), /*verify=*/true);
  EXPECT_EQ(box, box_of(data, chunk, off, shape, 4));
  // A byte changed through the page cache is what a direct read sees, and it is caught.
  flip_byte(path, position_of(path, data) + 2'000'000);
  ShardReader bad(path);
  ASSERT_TRUE(bad.enable_direct_io());
  try {
    bad.read_chunk(rows[0], got.data(), /*verify=*/true);
    FAIL() << "expected a checksum error";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find("key 'big'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("checksum mismatch"), std::string::npos) << e.what();
  }
}

TEST(ShardFile, FuzzCorpusFilesAreReadOrRefusedWithoutCrashing) {
  // The seeds and the findings of tests/fuzz/fuzz_shard_file (HDF5 loops and out-of-bounds
  // copies on crafted heaps and headers), replayed in every build, not only the clang one.
  const fs::path corpus =
      fs::path(SHARDLOAD_FIXTURES_DIR) / ".." / "fuzz" / "corpus" / "fuzz_shard_file";
  int files = 0, refused = 0;
  for (const auto& entry : fs::directory_iterator(corpus)) {
    const std::string image = read_file(entry.path().string());
    ++files;
    try {
      read_manifest_image(entry.path().filename().string(), image);
    } catch (const FormatError&) {
      ++refused;
    }
    try {
      ShardReader reader(entry.path().filename().string(), image);
      for (const auto& row : reader.read_index(0)) {
        std::vector<char> buf(row.nbytes);
        reader.read_chunk(row, buf.data(), true);
      }
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(entry.path().filename().string()), std::string::npos)
          << e.what();
    }
  }
  EXPECT_GE(files, 9);
  EXPECT_GE(refused, 5);  // the findings are refused as manifests
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
