// Checkpoints in the formats people have, read in place: Hugging Face indexes, .safetensors and
// .pt files as chunk readers, what a path is, and bad inputs for each.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/checkpoint_source.h"
#include "io/pt/pt_reader.h"
#include "io/pt_layout.h"
#include "io/safetensors/hf_index.h"
#include "io/safetensors/safetensors_reader.h"
#include "io/tensor_file.h"
#include "io/torch_dtype.h"
#include "loader/checkpoint_info.h"
#include "tests/unit/temp_dir.h"

namespace shardload {
namespace {

namespace fs = std::filesystem;

using shardload::test_util::TempDir;

void write_text(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

/// Runs `f`, expecting an exception of type E whose message contains every one of `parts`.
template <class E, class F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one containing '" << parts.front() << "'";
  } catch (const E& e) {
    for (const auto& p : parts) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
          << "'" << p << "' not in: " << e.what();
    }
  }
}

bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ca = a.contiguous(), cb = b.contiguous();
  return ca.scalar_type() == cb.scalar_type() && ca.sizes() == cb.sizes() &&
         (ca.nbytes() == 0 || std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0);
}

/// A state dict of every dtype Hugging Face checkpoints hold.
TensorList sample() {
  const at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6}) * 0.5 - 3;
  return {{"embed.weight", base},
          {"layer.0.bias", base[0].to(at::kBFloat16)},
          {"layer.0.half", base.narrow(0, 1, 2).to(at::kHalf)},
          {"positions", at::arange(5, at::kLong)},
          {"mask", at::tensor({1, 0, 1}, at::kInt).to(at::kBool)},
          {"scale", at::scalar_tensor(2.5, at::kFloat)},
          {"empty", at::empty({0, 3}, at::kFloat)}};
}

/// A sharded Hugging Face directory: the sample over two shard files and the index json.
std::string write_hf_dir(const TempDir& dir) {
  TensorList all = sample();
  TensorList first(all.begin(), all.begin() + 3), second(all.begin() + 3, all.end());
  write_tensor_file(dir.file("model-00001-of-00002.safetensors"), first);
  write_tensor_file(dir.file("model-00002-of-00002.safetensors"), second);
  std::string map;
  for (size_t i = 0; i < all.size(); ++i) {
    map += std::string(i ? "," : "") + "\"" + all[i].key + "\": \"model-0000" +
           (i < 3 ? "1" : "2") + "-of-00002.safetensors\"";
  }
  write_text(dir.file(kHfIndexName),
             "{\"metadata\": {\"total_size\": 123}, \"weight_map\": {" + map + "}}");
  return dir.path();
}

// ------------------------------------------------------------------------------------------
TEST(HfIndex, ParsesTheWeightMapAndMetadata) {
  const HfIndex index = parse_hf_index(
      R"({"metadata": {"total_size": 42, "format": "pt"}, "other": 1,
          "weight_map": {"b": "model-00002-of-00002.safetensors",
                         "a": "model-00001-of-00002.safetensors",
                         "c": "model-00002-of-00002.safetensors"}})");
  EXPECT_EQ(index.files, (std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                   "model-00002-of-00002.safetensors"}));
  ASSERT_EQ(index.weight_map.size(), 3u);
  EXPECT_EQ(index.weight_map[0], (std::pair<std::string, int32_t>{"b", 1}));
  EXPECT_EQ(index.weight_map[1], (std::pair<std::string, int32_t>{"a", 0}));
  EXPECT_EQ(index.weight_map[2], (std::pair<std::string, int32_t>{"c", 1}));
  ASSERT_EQ(index.metadata.size(), 2u);
  EXPECT_EQ(index.metadata[0], (std::pair<std::string, std::string>{"total_size", "42"}));
}

TEST(HfIndex, RefusesWhatIsNoIndex) {
  const std::string ok = "\"m.safetensors\"";
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"weight_map": {"w": "../x.safetensors"}})", "not a plain file name"},
      {R"({"weight_map": {"w": "/etc/x.safetensors"}})", "not a plain file name"},
      {R"({"weight_map": {"w": "sub/x.safetensors"}})", "not a plain file name"},
      {R"({"weight_map": {"w": ".."}})", "not a plain file name"},
      {R"({"weight_map": {"w": "model.bin"}})", "not a .safetensors file"},
      {R"({"weight_map": {"w": )" + ok + R"(, "w": )" + ok + "}}", "names key 'w' twice"},
      {R"({"weight_map": {"w": {"file": )" + ok + "}}}", "JSON object inside"},
      {R"({"weight_map": {"w": [1]}})", "JSON array"},
      {R"({"weight_map": {"w": 7}})", "key 'w': the file name is not a string"},
      {R"({"metadata": {"total_size": 1}})", "no \"weight_map\""},
      {R"({"weight_map": {}, "weight_map": {}})", "two \"weight_map\""},
      {R"([{"weight_map": {}}])", "JSON array"},
      {R"("weight_map")", "not a JSON object"},
      {R"({"weight_map": {"w": )" + ok, "not valid JSON"},
      {"", "not valid JSON"},
      {R"({"weight_map": {"a\u0000b": )" + ok + "}}", "NUL"},
      {R"({"metadata": )" + std::string(100000, '[') + std::string(100000, ']') + "}",
       "JSON array"},
  };
  for (const auto& [json, expected] : cases) {
    SCOPED_TRACE(json.substr(0, 80));
    expect_error<FormatError>([&] { parse_hf_index(json); }, {expected});
  }
}

TEST(HfIndex, RefusesAnOversizedFileBeforeReadingIt) {
  TempDir dir;
  const std::string path = dir.file(kHfIndexName);
  write_text(path, "{}");
  fs::resize_file(path, kMaxHfIndexBytes + 1);  // sparse
  expect_error<FormatError>([&] { read_hf_index(path); }, {path, "at most"});
}

TEST(HfIndex, PlainFileNames) {
  EXPECT_TRUE(is_plain_file_name("model-00001-of-00002.safetensors"));
  EXPECT_TRUE(is_plain_file_name("..x"));
  for (const char* bad : {"", ".", "..", "a/b", "/a"}) EXPECT_FALSE(is_plain_file_name(bad)) << bad;
  EXPECT_FALSE(is_plain_file_name(std::string(256, 'a')));
  EXPECT_FALSE(is_plain_file_name(std::string("a\0b", 3)));
  EXPECT_FALSE(is_plain_file_name("\xff.safetensors"));
}

// ------------------------------------------------------------------------------------------
TEST(SafetensorsReader, RowsAreByteRangesOfTheFileAndReadsAreExact) {
  TempDir dir;
  const std::string path = dir.file("s.safetensors");
  const TensorList tensors = sample();
  write_tensor_file(path, tensors);
  SafetensorsReader reader(path);
  EXPECT_FALSE(reader.has_checksums());
  const auto rows = reader.read_index(3);
  ASSERT_EQ(rows.size(), tensors.size());
  for (const ChunkRecord& row : rows) {
    SCOPED_TRACE(row.key);
    const auto it = std::find_if(tensors.begin(), tensors.end(),
                                 [&](const NamedTensor& t) { return t.key == row.key; });
    ASSERT_NE(it, tensors.end());
    EXPECT_EQ(row.file, 3);
    EXPECT_EQ(row.global_shape, row.shape);
    EXPECT_EQ(row.nbytes, it->tensor.nbytes());
    EXPECT_GE(row.order, int64_t{3} << 32);
    reader.prepare(row);
    at::Tensor whole = at::empty(row.shape, it->tensor.options());
    reader.read_chunk(row, whole.data_ptr(), /*verify=*/true);
    EXPECT_TRUE(same_bits(whole, it->tensor));
    if (row.key == "embed.weight") {
      // A box in the middle: rows 1-2, columns 2-4.
      at::Tensor box = at::empty({2, 3}, at::kFloat);
      reader.read(row, {1, 2}, {2, 3}, box.data_ptr(), true);
      EXPECT_TRUE(same_bits(box, it->tensor.narrow(0, 1, 2).narrow(1, 2, 3)));
    }
  }
}

/// read_chunks of all rows (adjacent in the file: one read) equals each row's read_chunk.
template <class Reader>
void expect_read_chunks_whole(const Reader& reader, const std::vector<ChunkRecord>& rows) {
  std::vector<const ChunkRecord*> all;
  uint64_t total = 0;
  for (const auto& row : rows) {
    all.push_back(&row);
    total += row.nbytes;
  }
  std::vector<char> together(total + 1), one_by_one(total + 1);
  reader.read_chunks(all, together.data(), true);
  uint64_t at = 0;
  for (const auto& row : rows) {
    reader.read_chunk(row, one_by_one.data() + at, true);
    at += row.nbytes;
  }
  EXPECT_EQ(together, one_by_one);
}

TEST(SafetensorsReader, ReadsAdjacentTensorsTogether) {
  TempDir dir;
  const std::string path = dir.file("s.safetensors");
  write_tensor_file(path, sample());
  SafetensorsReader reader(path);
  expect_read_chunks_whole(reader, reader.read_index(0));
}

TEST(SafetensorsReader, RefusesRowsThatAreNotTheFilesTensors) {
  TempDir dir;
  const std::string path = dir.file("s.safetensors");
  write_tensor_file(path, sample());
  SafetensorsReader reader(path);
  const ChunkRecord row = reader.read_index(0).front();
  for (int what = 0; what < 4; ++what) {
    ChunkRecord bad = row;
    if (what == 0) bad.data_offset += 4;
    if (what == 1) bad.key = "no such key";
    if (what == 2) bad.dtype = DType::kInt32;
    if (what == 3) bad.shape = bad.global_shape = {static_cast<int64_t>(bad.nbytes)};
    std::vector<char> buffer(bad.nbytes + 16);
    expect_error<FormatError>([&] { reader.prepare(bad); }, {path, bad.key});
    expect_error<FormatError>([&] { reader.read_chunk(bad, buffer.data(), true); }, {path});
  }
}

TEST(SafetensorsReader, BadFilesNameTheFile) {
  TempDir dir;
  const std::string good = dir.file("good.safetensors");
  write_tensor_file(good, {{"b", at::tensor({1, 0}, at::kInt).to(at::kBool)}});
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  // A bool byte 2: the header is fine, the read finds it.
  const std::string two = dir.file("two.safetensors");
  std::string changed = bytes;
  changed.back() = 2;
  write_text(two, changed);
  SafetensorsReader reader(two);
  const ChunkRecord row = reader.read_index(0).front();
  char out[2];
  expect_error<FormatError>([&] { reader.read_chunk(row, out, true); }, {two, "bool"});
  expect_error<FormatError>([&] { reader.verify_chunk(row); }, {two, "bool"});
  // Truncated: the header's offsets lie beyond the file.
  const std::string cut = dir.file("cut.safetensors");
  write_text(cut, bytes.substr(0, bytes.size() - 1));
  expect_error<FormatError>([&] { SafetensorsReader r(cut); }, {cut, "data_offsets"});
  expect_error<FormatError>([&] { SafetensorsReader r(dir.file("missing.safetensors")); },
                            {"missing.safetensors"});
}

// ------------------------------------------------------------------------------------------
TEST(PtReader, ReadsAFlatStateDictInPlace) {
  TempDir dir;
  const std::string path = dir.file("sd.pt");
  const TensorList tensors = sample();
  write_tensor_file(path, tensors);
  PtReader reader(path, "");
  EXPECT_FALSE(reader.has_checksums());
  EXPECT_TRUE(reader.notes().empty());
  const auto rows = reader.read_index(0);
  ASSERT_EQ(rows.size(), tensors.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    SCOPED_TRACE(rows[i].key);
    EXPECT_EQ(rows[i].key, tensors[i].key);  // file order
    EXPECT_EQ(rows[i].order, static_cast<int64_t>(i));
    EXPECT_EQ(rows[i].dataset.rfind("data/", 0), 0u);
    at::Tensor t = at::empty(rows[i].shape, tensors[i].tensor.options());
    reader.read_chunk(rows[i], t.data_ptr(), true);
    EXPECT_TRUE(same_bits(t, tensors[i].tensor));
  }
  expect_read_chunks_whole(reader, rows);
  at::Tensor box = at::empty({3, 2}, at::kFloat);
  reader.read(rows[0], {1, 4}, {3, 2}, box.data_ptr(), true);
  EXPECT_TRUE(same_bits(box, tensors[0].tensor.narrow(0, 1, 3).narrow(1, 4, 2)));
  expect_error<UsageError>([&] { PtReader r(path, "model"); }, {path, "model"});
}

TEST(PtLayout, ContiguousViews) {
  PtTensor t;
  t.shape = {2, 3};
  t.stride = {3, 1};
  EXPECT_TRUE(t.contiguous());
  t.stride = {1, 2};  // a transpose
  EXPECT_FALSE(t.contiguous());
  t.shape = {1, 3};
  t.stride = {7, 1};  // a dimension of 1 may have any stride
  EXPECT_TRUE(t.contiguous());
  t.shape = {4};
  t.stride = {0};  // a stride-0 expansion
  EXPECT_FALSE(t.contiguous());
  t.shape = {0, 3};
  t.stride = {5, 5};  // nothing to lay out
  EXPECT_TRUE(t.contiguous());
  t.shape = {};
  t.stride = {};
  EXPECT_TRUE(t.contiguous());
}

// ------------------------------------------------------------------------------------------
TEST(CheckpointSource, FindsWhatAPathIs) {
  TempDir dir;
  const std::string hf = write_hf_dir(dir);
  CheckpointSource s = find_checkpoint_source(hf);
  EXPECT_EQ(s.format, SourceFormat::kSafetensors);
  EXPECT_EQ(s.index_path, hf + "/" + kHfIndexName);
  EXPECT_EQ(s.manifest.shard_files.size(), 2u);
  EXPECT_EQ(s.weight_map.size(), sample().size());
  EXPECT_EQ(s.missing_checksums_reason(), "safetensors files carry no checksums");

  // The weight map stays with the process that read it.
  CheckpointSource copy = deserialize_checkpoint_source(serialize_checkpoint_source(s));
  EXPECT_EQ(copy.format, s.format);
  EXPECT_EQ(copy.dir, s.dir);
  EXPECT_EQ(copy.manifest.shard_files, s.manifest.shard_files);
  EXPECT_EQ(copy.manifest.metadata, s.manifest.metadata);
  EXPECT_TRUE(copy.weight_map.empty());
  expect_error<FormatError>(
      [&] { deserialize_checkpoint_source(serialize_checkpoint_source(s).substr(0, 20)); },
      {"malformed"});

  const std::string one = dir.file("one");
  fs::create_directories(one);
  write_tensor_file(one + "/model.safetensors", sample());
  EXPECT_EQ(find_checkpoint_source(one).manifest.shard_files,
            std::vector<std::string>{"model.safetensors"});
  s = find_checkpoint_source(one + "/model.safetensors");
  EXPECT_EQ(s.format, SourceFormat::kSafetensors);
  EXPECT_EQ(s.file_path(0), one + "/model.safetensors");
  write_tensor_file(dir.file("sd.pt"), sample());
  s = find_checkpoint_source(dir.file("sd.pt"), "model");
  EXPECT_EQ(s.format, SourceFormat::kTorch);
  EXPECT_EQ(s.select, "model");

  const std::string nothing = dir.file("nothing");
  fs::create_directories(nothing);
  expect_error<FormatError>([&] { find_checkpoint_source(nothing); },
                            {nothing, "not a shardload checkpoint", "Hugging Face"});
  expect_error<FormatError>([&] { find_checkpoint_source(dir.file("gone.pt")); },
                            {"gone.pt", "no such file"});
  expect_error<UsageError>([&] { find_checkpoint_source(hf, "model"); }, {hf, "--select"});
}

TEST(CheckpointSource, TheWeightMapMustMatchTheShards) {
  TempDir dir;
  const std::string hf = write_hf_dir(dir);
  const CheckpointSource s = find_checkpoint_source(hf);
  std::vector<ChunkRecord> index;
  for (int32_t f = 0; f < 2; ++f) {
    auto rows = open_chunk_reader(s, f)->read_index(f);
    index.insert(index.end(), rows.begin(), rows.end());
  }
  check_weight_map(s, index);

  auto extra = index;
  extra.push_back(extra.back());
  extra.back().key = "extra";
  expect_error<FormatError>([&] { check_weight_map(s, extra); },
                            {"extra", "not in the weight_map", kHfIndexName});
  auto moved = index;
  moved.front().file = 1;
  expect_error<FormatError>([&] { check_weight_map(s, moved); },
                            {moved.front().key, "model-00001-of-00002.safetensors",
                             "model-00002-of-00002.safetensors holds it"});
  auto fewer = index;
  fewer.pop_back();
  expect_error<FormatError>([&] { check_weight_map(s, fewer); },
                            {index.back().key, "holds no such tensor"});
}

TEST(CheckpointInfo, ReadsHuggingFaceDirectoriesWhole) {
  TempDir dir;
  const std::string hf = write_hf_dir(dir);
  const CheckpointInfo info = read_checkpoint_info(hf);
  EXPECT_EQ(info.source.format, SourceFormat::kSafetensors);
  EXPECT_EQ(info.index.size(), sample().size());
  const TensorList back = read_checkpoint(hf);
  const TensorList expected = sample();
  ASSERT_EQ(back.size(), expected.size());
  for (const auto& t : expected) {
    const auto it = std::find_if(back.begin(), back.end(),
                                 [&](const NamedTensor& b) { return b.key == t.key; });
    ASSERT_NE(it, back.end()) << t.key;
    EXPECT_TRUE(same_bits(it->tensor, t.tensor)) << t.key;
  }
  const VerifyReport report = verify_checkpoint(hf);
  EXPECT_TRUE(report.problems.empty());
  EXPECT_EQ(report.checksums_reason, "safetensors files carry no checksums");

  // A key the index names that no shard holds: named with the index file.
  std::ifstream in(hf + "/" + kHfIndexName);
  std::string json((std::istreambuf_iterator<char>(in)), {});
  json.insert(json.rfind('}') - 1, ", \"ghost\": \"model-00001-of-00002.safetensors\"");
  write_text(hf + "/" + kHfIndexName, json);
  expect_error<FormatError>([&] { read_checkpoint_info(hf); }, {"ghost", kHfIndexName});
  EXPECT_FALSE(verify_checkpoint(hf).problems.empty());
}

}  // namespace
}  // namespace shardload
