// One conformance suite run against every format driver's ChunkReader (the way tensorstore runs
// one suite against every driver): what a file written by the format's writer holds must come
// back through the reader bit for bit, whole, in boxes and in coalesced runs, from several
// threads at once; every dtype; bool bytes other than 0 and 1, corrupt bytes, truncated files,
// garbage and flipped header bytes are refused with a FormatError naming the file, never a
// crash. A driver is three lines below: how to write a state dict, how to open the reader.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "io/chunk_reader.h"
#include "io/dcp/dcp_reader.h"
#include "io/dcp/dcp_writer.h"
#include "io/h5/shard_file.h"
#include "io/pt/pt_reader.h"
#include "io/pt/pt_writer.h"
#include "io/safetensors/safetensors_reader.h"
#include "io/safetensors/safetensors_writer.h"
#include "io/tensor_file.h"
#include "io/torch_dtype.h"
#include "tests/unit/temp_dir.h"

namespace shardload {
namespace {

using test_util::TempDir;

struct Driver {
  std::string name;
  std::string file_name;
  std::function<void(const std::string&, const TensorList&)> write;
  std::function<std::unique_ptr<ChunkReader>(const std::string&)> open;
  /// The dtypes the format cannot hold (its writer refuses them).
  std::vector<at::ScalarType> lacks = {};
};

void PrintTo(const Driver& d, std::ostream* os) { *os << d.name; }

void write_shard(const std::string& path, const TensorList& tensors) {
  // Small packs and blocks, so that packed chunks, chunks of their own and several blocks per
  // chunk all occur in a small file.
  ShardWriterOptions options;
  options.block_bytes = 1024;
  options.pack_threshold = 4096;
  for (const auto& [key, tensor] : tensors) {
    if (!dtype_from_scalar_type(tensor.scalar_type())) {
      throw UsageError("key '" + key + "': no format dtype");  // as save() refuses it
    }
  }
  ShardWriter writer(path, 0, 1, options);
  for (const auto& [key, tensor] : tensors) {
    const at::Tensor t = tensor.contiguous();
    ChunkRecord row;
    row.key = key;
    row.dtype = *dtype_from_scalar_type(t.scalar_type());
    row.global_shape = t.sizes().vec();
    row.offset = Shape(row.global_shape.size(), 0);
    row.shape = row.global_shape;
    writer.add(std::move(row), t.data_ptr());
  }
  writer.finish();
}

/// A DCP checkpoint of one rank's data file: its .metadata in the directory `path`.d, its data
/// file moved to `path` (DcpReader opens any path it is given for the metadata's file 0).
void write_dcp(const std::string& path, const TensorList& tensors) {
  std::vector<DcpWriteChunk> chunks;
  std::vector<at::Tensor> held;
  for (const auto& [key, tensor] : tensors) {
    const auto dtype = dtype_from_scalar_type(tensor.scalar_type());
    if (!dtype) throw UsageError("key '" + key + "': no format dtype");
    held.push_back(tensor.contiguous());
    const Shape shape = tensor.sizes().vec();
    chunks.push_back({key, *dtype, shape, Shape(shape.size(), 0), shape, held.back().data_ptr()});
  }
  const std::string dir = path + ".d";
  std::vector<DcpMetadata> fragments{write_dcp_data_file(dir, 0, chunks, {})};
  write_dcp_metadata(dir, merge_dcp_metadata(std::move(fragments)));
  std::filesystem::rename(dir + "/" + dcp_data_file_name(0), path);
}

std::vector<Driver> drivers() {
  return {
      {"h5", "shard-00000-of-00001.h5", write_shard,
       [](const std::string& p) { return std::make_unique<ShardReader>(p); }},
      {"safetensors",
       "model.safetensors",
       [](const std::string& p, const TensorList& t) { write_safetensors_file(p, t); },
       [](const std::string& p) { return std::make_unique<SafetensorsReader>(p); },
       {at::kComplexHalf, at::kComplexDouble}},
      {"pt", "model.pt", write_torch_file,
       [](const std::string& p) { return std::make_unique<PtReader>(p, ""); }},
      {"dcp", "__0_0.distcp", write_dcp,
       [](const std::string& p) {
         auto md = std::make_shared<const DcpMetadata>(read_dcp_metadata(p + ".d"));
         return std::make_unique<DcpReader>(p, md, 0);
       }},
  };
}

std::string raw_bytes(const at::Tensor& t) {
  const at::Tensor c = t.contiguous();
  return std::string(static_cast<const char*>(c.data_ptr()), c.nbytes());
}

/// Every dtype shardload knows.
std::vector<at::ScalarType> all_types() {
  std::vector<at::ScalarType> out;
  for (uint64_t d = 0; d < kDTypeCount; ++d) out.push_back(scalar_type_of(static_cast<DType>(d)));
  return out;
}

/// Random bit patterns (NaNs and all) of every dtype the format holds, in several shapes: 0-d,
/// empty, odd, 3-D, and one large enough for chunks of their own and several blocks.
TensorList sample(const std::vector<at::ScalarType>& lacks) {
  TensorList out;
  at::manual_seed(7);
  for (at::ScalarType type : all_types()) {
    if (std::find(lacks.begin(), lacks.end(), type) != lacks.end()) continue;
    const std::string name(dtype_name(*dtype_from_scalar_type(type)));
    auto random = [&](std::vector<int64_t> shape) {
      if (type == at::kBool) return at::randint(0, 2, shape).to(at::kBool);
      const int64_t size = static_cast<int64_t>(c10::elementSize(type));
      std::vector<int64_t> byte_shape = shape;
      if (byte_shape.empty()) byte_shape.push_back(1);
      byte_shape.back() *= size;
      at::Tensor bytes = at::randint(0, 256, byte_shape, at::kByte);
      return bytes.view(type).reshape(shape).clone();
    };
    // A 0-d float4_e2m1fn_x2 has no F4 shape in safetensors (its two values lie along the last
    // dimension): the one shape not in the sample.
    if (type != at::kFloat4_e2m1fn_x2) out.push_back({name + ".scalar", random({})});
    out.push_back({name + ".empty", random({0, 3})});
    out.push_back({name + ".odd", random({7})});
    out.push_back({name + ".cube", random({5, 6, 7})});
  }
  out.push_back({"big", at::randn({48, 200})});  // 38 KiB: several 1 KiB blocks
  out.push_back({"big.bool", at::randint(0, 2, {3000}).to(at::kBool)});
  return out;
}

class Conformance : public ::testing::TestWithParam<Driver> {
 protected:
  void SetUp() override {
    path_ = dir_.file(GetParam().file_name);
    tensors_ = sample(GetParam().lacks);
    GetParam().write(path_, tensors_);
    for (const auto& [key, t] : tensors_) by_key_[key] = t;
  }

  std::unique_ptr<ChunkReader> open() const { return GetParam().open(path_); }

  /// The rows of `reader`, each prepared, by key.
  static std::map<std::string, ChunkRecord> rows_of(const ChunkReader& reader) {
    std::map<std::string, ChunkRecord> rows;
    for (ChunkRecord& row : reader.read_index(0)) {
      reader.prepare(row);
      rows.emplace(row.key, std::move(row));
    }
    return rows;
  }

  /// Overwrites `n` bytes of the file at `pos`.
  void poke(uint64_t pos, const std::string& bytes) const {
    std::fstream f(path_, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(pos));
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }

  /// The file position of `needle` (unique random bytes of a tensor) in the file.
  uint64_t find(const std::string& needle) const {
    std::ifstream f(path_, std::ios::binary);
    const std::string all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const size_t at = all.find(needle);
    EXPECT_NE(at, std::string::npos);
    EXPECT_EQ(all.find(needle, at + 1), std::string::npos) << "the pattern is not unique";
    return at;
  }

  /// Runs every step a load takes on the file (open, index, prepare, verified whole reads);
  /// returns the error's text, or "" when every step succeeded.
  std::string error_of_whole_read() const {
    try {
      auto reader = open();
      for (const auto& [key, row] : rows_of(*reader)) {
        std::string buf(row.nbytes, '\0');
        reader->read_chunk(row, buf.data(), /*verify=*/true);
      }
      return "";
    } catch (const Error& e) {
      return e.what();
    }
  }

  TempDir dir_;
  std::string path_;
  TensorList tensors_;
  std::map<std::string, at::Tensor> by_key_;
};

TEST_P(Conformance, EveryDtypeComesBackBitForBit) {
  auto reader = open();
  const auto rows = rows_of(*reader);
  ASSERT_EQ(rows.size(), tensors_.size());
  for (const auto& [key, row] : rows) {
    SCOPED_TRACE(key);
    const at::Tensor& want = by_key_.at(key);
    EXPECT_EQ(row.dtype, *dtype_from_scalar_type(want.scalar_type()));
    EXPECT_EQ(row.global_shape, want.sizes().vec());
    EXPECT_EQ(row.nbytes, want.nbytes());
    std::string got(row.nbytes, '\0');
    reader->read_chunk(row, got.data(), /*verify=*/true);
    EXPECT_EQ(got, raw_bytes(want));
  }
  // The whole-file layer over the same reader gives the same tensors.
  const TensorFileContents whole = read_all_tensors(*reader);
  ASSERT_EQ(whole.tensors.size(), tensors_.size());
  for (const auto& [key, t] : whole.tensors) EXPECT_EQ(raw_bytes(t), raw_bytes(by_key_.at(key)));
}

TEST_P(Conformance, ADtypeTheFormatLacksIsRefusedByItsWriter) {
  // bits8 no format holds; complex128 not safetensors.
  std::vector<at::ScalarType> refused = GetParam().lacks;
  refused.push_back(at::kBits8);
  for (at::ScalarType type : refused) {
    const std::string path = dir_.file("lacks-" + GetParam().file_name);
    EXPECT_THROW(GetParam().write(path, {{"z", at::empty({2}, type)}}), UsageError)
        << c10::toString(type);
    EXPECT_FALSE(std::filesystem::exists(path));
  }
}

TEST_P(Conformance, BoxesAreTheSlicesOfTheTensor) {
  auto reader = open();
  const auto rows = rows_of(*reader);
  const std::vector<std::pair<Shape, Shape>> boxes = {{{0, 0, 0}, {5, 6, 7}},
                                                      {{1, 2, 3}, {2, 3, 4}},
                                                      {{4, 5, 6}, {1, 1, 1}},
                                                      {{0, 3, 0}, {5, 1, 7}},
                                                      {{2, 0, 5}, {3, 6, 2}}};
  for (const auto& [key, row] : rows) {
    if (row.shape.size() != 3) continue;
    for (const auto& [offset, shape] : boxes) {
      SCOPED_TRACE(key + " box at " + shape_str(offset) + " of " + shape_str(shape));
      at::Tensor want = by_key_.at(key);
      for (size_t d = 0; d < 3; ++d) {
        want = want.narrow(static_cast<int64_t>(d), offset[d], shape[d]);
      }
      std::string got(want.nbytes(), '\0');
      reader->read(row, offset, shape, got.data(), /*verify=*/true);
      EXPECT_EQ(got, raw_bytes(want));
    }
  }
}

TEST_P(Conformance, CoalescedRunsAreTheChunksBackToBack) {
  auto reader = open();
  const auto rows = rows_of(*reader);
  std::vector<const ChunkRecord*> order;
  for (const auto& [key, row] : rows) order.push_back(&row);
  // The file's order (runs of neighbours coalesce), then the reverse (nothing does).
  std::sort(order.begin(), order.end(),
            [](const ChunkRecord* a, const ChunkRecord* b) { return a->order < b->order; });
  for (int pass = 0; pass < 2; ++pass) {
    if (pass == 1) std::reverse(order.begin(), order.end());
    std::string want;
    uint64_t total = 0;
    for (const ChunkRecord* row : order) {
      want += raw_bytes(by_key_.at(row->key));
      total += row->nbytes;
    }
    std::string got(total, '\0');
    reader->read_chunks(order, got.data(), /*verify=*/true);
    EXPECT_EQ(got, want) << (pass ? "reversed" : "file order");
  }
}

TEST_P(Conformance, ConcurrentReadsAgree) {
  auto reader = open();
  const auto rows = rows_of(*reader);
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 5; ++round) {
        auto it = rows.begin();
        std::advance(it, (t * 7 + round) % rows.size());
        for (size_t i = 0; i < rows.size(); ++i, ++it) {
          if (it == rows.end()) it = rows.begin();
          std::string got(it->second.nbytes, '\0');
          reader->read_chunk(it->second, got.data(), /*verify=*/true);
          if (got != raw_bytes(by_key_.at(it->first))) ++mismatches[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST_P(Conformance, BoolBytesOtherThanZeroAndOneAreRefused) {
  // Bytes 0, 1, 2, 1 as a bool tensor: the writer stores them as they are.
  const at::Tensor bad = at::tensor({0, 1, 2, 1}, at::kByte).view(at::kBool);
  const std::string path = dir_.file("bad-" + GetParam().file_name);
  GetParam().write(path, {{"mask", bad}});
  auto reader = GetParam().open(path);
  const auto rows = rows_of(*reader);
  std::string got(4, '\0');
  try {
    reader->read_chunk(rows.at("mask"), got.data(), /*verify=*/true);
    ADD_FAILURE() << "a bool byte 2 was read";
  } catch (const FormatError& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(path), std::string::npos) << what;
    EXPECT_NE(what.find("'mask'"), std::string::npos) << what;
    EXPECT_NE(what.find("byte value 2"), std::string::npos) << what;
  }
}

TEST_P(Conformance, ACorruptByteIsCaughtWhereTheFormatHasChecksums) {
  const std::string original = raw_bytes(by_key_.at("big"));
  const uint64_t pos = find(original.substr(20000, 32)) + 16;
  std::string flipped(1, static_cast<char>(original[20016] ^ 0x5a));
  poke(pos, flipped);
  auto reader = open();
  const auto rows = rows_of(*reader);
  const ChunkRecord& row = rows.at("big");
  std::string got(row.nbytes, '\0');
  if (reader->has_checksums()) {
    try {
      reader->read_chunk(row, got.data(), /*verify=*/true);
      ADD_FAILURE() << "a corrupt byte was read";
    } catch (const FormatError& e) {
      const std::string what = e.what();
      EXPECT_NE(what.find(path_), std::string::npos) << what;
      EXPECT_NE(what.find("'big'"), std::string::npos) << what;
    }
    // A box that covers the byte is refused too; one in another block is read.
    const int64_t element = 20016 / 4;
    std::string box(200 * 4, '\0');
    EXPECT_THROW(reader->read(row, {element / 200, 0}, {1, 200}, box.data(), true), FormatError);
    reader->read(row, {0, 0}, {1, 200}, box.data(), true);
    EXPECT_EQ(box, original.substr(0, 800));
  } else {
    // Nothing can tell: the reader says it has no checksums, and reads what the file holds.
    reader->read_chunk(row, got.data(), /*verify=*/true);
    EXPECT_EQ(got[20016], flipped[0]);
  }
}

TEST_P(Conformance, TruncatedFilesAreRefusedNamingTheFile) {
  const uint64_t size = std::filesystem::file_size(path_);
  const std::string whole = [&] {
    std::ifstream f(path_, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }();
  for (uint64_t keep : {uint64_t{0}, uint64_t{7}, uint64_t{100}, size / 2, size - 1}) {
    SCOPED_TRACE("kept " + std::to_string(keep) + " of " + std::to_string(size) + " bytes");
    std::filesystem::resize_file(path_, keep);
    const std::string what = error_of_whole_read();
    EXPECT_FALSE(what.empty()) << "a truncated file read without an error";
    EXPECT_NE(what.find(path_), std::string::npos) << what;
    std::ofstream(path_, std::ios::binary | std::ios::trunc) << whole;
  }
  EXPECT_EQ(error_of_whole_read(), "");
}

TEST_P(Conformance, GarbageIsRefusedNamingTheFile) {
  at::manual_seed(3);
  const at::Tensor noise = at::randint(0, 256, {4096}, at::kByte);
  std::ofstream(path_, std::ios::binary | std::ios::trunc)
      .write(static_cast<const char*>(noise.data_ptr()), 4096);
  const std::string what = error_of_whole_read();
  EXPECT_NE(what.find(path_), std::string::npos) << what;
}

TEST_P(Conformance, FlippedHeaderBytesAreErrorsOrReadConsistently) {
  // The first 512 bytes (headers, zip records, superblocks), one at a time: each file is refused
  // with an error naming it, or every row reads whole with the size its shape says.
  const std::string whole = [&] {
    std::ifstream f(path_, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }();
  int refused = 0;
  for (size_t pos = 0; pos < 512 && pos < whole.size(); pos += 7) {
    std::string bytes = whole;
    bytes[pos] = static_cast<char>(bytes[pos] ^ 0xff);
    std::ofstream(path_, std::ios::binary | std::ios::trunc) << bytes;
    try {
      auto reader = open();
      for (const auto& [key, row] : rows_of(*reader)) {
        ASSERT_EQ(row.nbytes, static_cast<uint64_t>(numel(row.shape) * dtype_size(row.dtype)))
            << "byte " << pos << ", key " << key;
        std::string buf(row.nbytes, '\0');
        reader->read_chunk(row, buf.data(), /*verify=*/true);
      }
    } catch (const Error& e) {
      ++refused;
      EXPECT_NE(std::string(e.what()).find(path_), std::string::npos)
          << "byte " << pos << ": " << e.what();
    }
  }
  EXPECT_GT(refused, 0);
}

INSTANTIATE_TEST_SUITE_P(EveryReader, Conformance, ::testing::ValuesIn(drivers()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace shardload
