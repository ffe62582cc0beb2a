// Foreign files bounded like our own (issue 20): which stored bytes a view covers, bool bytes
// judged there and only there (whole-file reader, in-place reader, verify), files that are not
// regular refused at once, JSON headers parsed in linear time with limits while parsing.
#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/file_bytes.h"
#include "io/h5/manifest.h"
#include "io/pickle.h"
#include "io/pt/pt_reader.h"
#include "io/safetensors/hf_index.h"
#include "io/safetensors/safetensors_reader.h"
#include "io/safetensors_header.h"
#include "io/tensor_file.h"
#include "io/view_cover.h"
#include "tests/unit/temp_dir.h"

namespace shardload {
namespace {

namespace fs = std::filesystem;

#define EXPECT_CONTAINS(haystack, needle)                                                         \
  do {                                                                                            \
    const std::string h_ = (haystack);                                                            \
    EXPECT_NE(h_.find(needle), std::string::npos) << "'" << h_ << "' lacks '" << (needle) << "'"; \
  } while (0)

using shardload::test_util::TempDir;

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no exception";
}

/// The covered elements of a view, as for_each_run visits them (in order, with repeats).
std::vector<int64_t> covered(const Shape& shape, const Shape& stride) {
  std::vector<int64_t> out;
  ViewCover(shape, stride).for_each_run([&](int64_t first, int64_t count) {
    for (int64_t k = 0; k < count; ++k) out.push_back(first + k);
  });
  return out;
}

TEST(ViewCover, FindsTheStoredElementsAViewCovers) {
  using V = std::vector<int64_t>;
  EXPECT_EQ(covered({2, 3}, {3, 1}), (V{0, 1, 2, 3, 4, 5}));  // contiguous: one run
  EXPECT_EQ(ViewCover({2, 3}, {3, 1}).runs(), 1);
  EXPECT_EQ(covered({3, 2}, {1, 3}), (V{0, 1, 2, 3, 4, 5}));  // a transpose: one run too
  EXPECT_EQ(covered({3}, {2}), (V{0, 2, 4}));                 // a step: the gaps are not covered
  EXPECT_EQ(ViewCover({3}, {2}).span(), 5);
  EXPECT_EQ(covered({4, 5}, {0, 0}), (V{0}));  // a stride-0 expansion covers one element
  const ViewCover huge({int64_t{1} << 31, int64_t{1} << 21}, {0, 0});
  EXPECT_EQ(huge.work(), 1);
  // Steps that fill each other's gaps merge into one progression: no element visited twice.
  EXPECT_EQ(covered({2, 3}, {4, 2}), (V{0, 2, 4, 6, 8}));
  EXPECT_EQ(ViewCover({2, 3}, {4, 2}).work(), 5);
  EXPECT_EQ(covered({3, 3}, {1, 1}), (V{0, 1, 2, 3, 4}));  // overlapping windows (unfold)
  EXPECT_EQ(covered({2, 0}, {1, 1}), V{});
  EXPECT_TRUE(ViewCover({2, 0}, {1, 1}).empty());
  // Strides 3 and 2 overlap in a pattern no merge folds: the work says so.
  const ViewCover overlap({int64_t{1} << 20, int64_t{1} << 20}, {3, 2});
  EXPECT_GT(overlap.work(), overlap.span() * kMaxViewVisitsPerElement);
  EXPECT_CONTAINS(error_of([&] { check_view_cover(overlap, {1 << 20, 1 << 20}); }), "overlap");
}

TEST(ViewCover, GathersViewsInCOrder) {
  const std::vector<int32_t> storage = {0, 1, 2, 3, 4, 5};
  std::vector<int32_t> out(6);
  gather_view(reinterpret_cast<const char*>(storage.data()), {3, 2}, {1, 3}, 4,
              reinterpret_cast<char*>(out.data()));
  EXPECT_EQ(out, (std::vector<int32_t>{0, 3, 1, 4, 2, 5}));
  out.assign(4, -1);
  gather_view(reinterpret_cast<const char*>(storage.data() + 5), {2, 2}, {0, 0}, 4,
              reinterpret_cast<char*>(out.data()));
  EXPECT_EQ(out, (std::vector<int32_t>{5, 5, 5, 5}));
}

// ----- .pt files crafted with a bool view

void rebuilt_tensor(PickleWriter& w, const std::string& storage_class, int64_t numel,
                    int64_t offset, const std::vector<int64_t>& size,
                    const std::vector<int64_t>& stride) {
  w.global("torch._utils", "_rebuild_tensor_v2");
  w.mark();
  w.mark();
  w.string("storage");
  w.global("torch", storage_class);
  w.string("0");
  w.string("cpu");
  w.integer(numel);
  w.tuple_from_mark();
  w.persistent_id();
  w.integer(offset);
  w.int_tuple(size);
  w.int_tuple(stride);
  w.boolean(false);
  w.global("collections", "OrderedDict");
  w.empty_tuple();
  w.reduce();
  w.tuple_from_mark();
  w.reduce();
}

/// A torch.save file {"m": a BoolStorage view} over the storage `bytes`.
std::string bool_view_file(const TempDir& dir, const std::string& name, const std::string& bytes,
                           const std::vector<int64_t>& size, const std::vector<int64_t>& stride) {
  PickleWriter w;
  w.global("collections", "OrderedDict");
  w.empty_tuple();
  w.reduce();
  w.mark();
  w.string("m");
  rebuilt_tensor(w, "BoolStorage", static_cast<int64_t>(bytes.size()), 0, size, stride);
  w.set_items();
  const std::string pickle = w.finish();
  const std::string path = dir.file(name);
  caffe2::serialize::PyTorchStreamWriter zip(path);
  zip.writeRecord("data.pkl", pickle.data(), pickle.size());
  zip.writeRecord("data/0", bytes.data(), bytes.size());
  zip.writeEndOfFile();
  return path;
}

TEST(ForeignBounds, BoolBytesAreJudgedWhereAViewCoversThemBeforeAnyCopy) {
  TempDir dir;
  // A transposed view covering byte 2: a strided copy would have made it `true`.
  const std::string bad =
      bool_view_file(dir, "bad.pt", std::string("\x01\x02\x00\x01", 4), {2, 2}, {1, 2});
  const std::string what = error_of([&] { read_tensor_file(bad); });
  EXPECT_CONTAINS(what, "In " + bad + ": reading key 'm': bool element 1 of the stored bytes");
  EXPECT_CONTAINS(what, "holds byte value 2");
  // A view stepping over bytes it does not cover (7s): they are not judged.
  const std::string step =
      bool_view_file(dir, "step.pt", std::string("\x00\x07\x01\x07\x01", 5), {3}, {2});
  const TensorList sd = read_tensor_file(step);
  ASSERT_EQ(sd.size(), 1u);
  EXPECT_TRUE(at::equal(sd[0].tensor, at::tensor({0, 1, 1}).to(at::kBool)));

  // The in-place reader: a read of the view and verify judge the same bytes.
  PtReader reader(step, "");
  const ChunkRecord row = reader.read_index(0).front();
  reader.prepare(row);
  EXPECT_NO_THROW(reader.verify_chunk(row));
  at::Tensor t = at::empty({3}, at::kBool);
  reader.read_chunk(row, t.data_ptr(), true);
  EXPECT_TRUE(at::equal(t, at::tensor({0, 1, 1}).to(at::kBool)));
  EXPECT_EQ(reader.stored_bytes(row), 5u);

  const std::string step_bad =
      bool_view_file(dir, "step_bad.pt", std::string("\x00\x07\x01\x07\x05", 5), {3}, {2});
  PtReader bad_reader(step_bad, "");
  const ChunkRecord bad_row = bad_reader.read_index(0).front();
  bad_reader.prepare(bad_row);
  // Element 4 of the stored bytes (the view's element 2) holds 5; the 7s are not judged.
  EXPECT_CONTAINS(error_of([&] { bad_reader.verify_chunk(bad_row); }),
                  "bool element 4 of the stored bytes the view covers");
  EXPECT_CONTAINS(error_of([&] { bad_reader.read_chunk(bad_row, t.data_ptr(), true); }),
                  "holds byte value 5");
  EXPECT_CONTAINS(error_of([&] { read_tensor_file(step_bad); }), "holds byte value 5");

  // A stride-0 expansion: one stored byte, judged once.
  const std::string expand =
      bool_view_file(dir, "expand.pt", std::string("\x02", 1), {1 << 20, 1 << 10}, {0, 0});
  PtReader expand_reader(expand, "");
  const ChunkRecord expand_row = expand_reader.read_index(0).front();
  expand_reader.prepare(expand_row);
  EXPECT_EQ(expand_reader.stored_bytes(expand_row), 1u);
  EXPECT_CONTAINS(error_of([&] { expand_reader.verify_chunk(expand_row); }), "byte value 2");
}

// ----- what is not a regular file

TEST(ForeignBounds, NonRegularFilesAreRefusedAtOnceNamingThePath) {
  TempDir dir;
  const auto start = std::chrono::steady_clock::now();
  for (const std::string name : {"f.pt", "f.safetensors", "model.safetensors.index.json"}) {
    const std::string fifo = dir.file(name);
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0);
    EXPECT_CONTAINS(error_of([&] { FileBytes::open(fifo); }), "not a regular file (a FIFO)");
    EXPECT_CONTAINS(error_of([&] { check_regular_file(fifo); }), fifo + ": not a regular file");
  }
  const std::string pt = dir.file("f.pt"), st = dir.file("f.safetensors");
  EXPECT_CONTAINS(error_of([&] { read_tensor_file(pt); }), "In " + pt + ": not a regular file");
  EXPECT_CONTAINS(error_of([&] { read_tensor_file(st); }), "In " + st + ": not a regular file");
  EXPECT_CONTAINS(error_of([&] { PtReader r(pt, ""); }), pt);
  EXPECT_CONTAINS(error_of([&] { SafetensorsReader r(st); }), st);
  const std::string index = dir.file("model.safetensors.index.json");
  EXPECT_CONTAINS(error_of([&] { read_hf_index(index); }), "In " + index + ": not a regular file");
  // HDF5 would open a FIFO manifest.h5 itself, blocking (then give up after its 15 s deadline).
  fs::create_directories(dir.file("ckpt"));
  const std::string manifest = dir.file("ckpt/manifest.h5");
  ASSERT_EQ(::mkfifo(manifest.c_str(), 0644), 0);
  EXPECT_CONTAINS(error_of([&] { read_manifest(dir.file("ckpt")); }),
                  "In " + manifest + ": not a regular file (a FIFO)");
  EXPECT_CONTAINS(error_of([&] { FileBytes::open("/dev/null"); }), "a character device");
  EXPECT_CONTAINS(error_of([&] { FileBytes::open(dir.file("")); }), "a directory");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

// ----- JSON headers: linear time, limits while parsing

std::string entries(size_t n, const std::string& prefix) {
  std::string out;
  for (size_t k = 0; k < n; ++k) {
    out += (k ? "," : "") + ("\"" + prefix + std::to_string(k) + "\"") +
           R"(:{"dtype":"F32","shape":[0],"data_offsets":[0,0]})";
  }
  return out;
}

TEST(ForeignBounds, HeadersOfManyKeysParseInLinearTime) {
  // 300k tensors and 500k metadata entries: the ordered JSON object of before searched its keys
  // linearly on every insert (200k keys took 35 s). Judged by this thread's CPU time against the
  // same parse at a tenth of the keys, so that a loaded machine does not fail it: linear time
  // takes about 10 times as long (up to 40 seen, as the hash sets outgrow the caches), the
  // quadratic search about 100 times.
  auto cpu_seconds = [] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  auto parse = [&](size_t tensors, size_t metadata) {
    const double start = cpu_seconds();
    const SafetensorsHeader h = parse_safetensors_header("{" + entries(tensors, "t") + "}", 0);
    EXPECT_EQ(h.entries.size(), tensors);
    std::string meta = R"({"__metadata__":{)";
    for (size_t k = 0; k < metadata; ++k)
      meta += (k ? ",\"m" : "\"m") + std::to_string(k) + "\":\"v\"";
    const SafetensorsHeader m = parse_safetensors_header(meta + "}}", 0);
    EXPECT_EQ(m.metadata.size(), metadata);
    return cpu_seconds() - start;
  };
  const double small = parse(30'000, 50'000);
  const double big = parse(300'000, 500'000);
  EXPECT_LT(big, std::max(60 * small, 4.0)) << "a tenth of the keys took " << small << " s";
  EXPECT_CONTAINS(error_of([&] {
                    parse_safetensors_header(
                        "{" + entries(300'000, "t") + "," + entries(1, "t") + "}", 0);
                  }),
                  "key 't0' twice");
}

TEST(ForeignBounds, HeaderLimitsHoldWhileParsing) {
  // A shape array is refused at its 65th entry, not once 10M entries were built.
  std::string shape = R"({"w":{"dtype":"F32","shape":[)";
  for (int k = 0; k < 10'000'000; ++k) shape += "1,";
  shape += R"(1],"data_offsets":[0,4]}})";
  EXPECT_CONTAINS(error_of([&] { parse_safetensors_header(shape, 4); }),
                  "shape of more than 64 dimensions");
  EXPECT_CONTAINS(error_of([&] {
                    parse_safetensors_header(
                        R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[)" +
                            std::string(200, '0').replace(1, 198, std::string(198, ',')) + "]}}",
                        4);
                  }),
                  "not valid JSON");
  std::string ignored = R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[0)";
  for (int k = 0; k < 100; ++k) ignored += ",0";
  EXPECT_CONTAINS(error_of([&] { parse_safetensors_header(ignored + "]}}", 4); }),
                  "an array of more than 64 items");
  EXPECT_CONTAINS(error_of([&] {
                    parse_safetensors_header(
                        R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4,8]}})", 8);
                  }),
                  "data_offsets");
  EXPECT_CONTAINS(error_of([&] { parse_safetensors_header(R"({"__metadata__":{"a":{}}})", 0); }),
                  "__metadata__ entry 'a' is a JSON object, not a string");
  EXPECT_CONTAINS(
      error_of([&] { parse_safetensors_header(R"({"__metadata__":{},"__metadata__":{}})", 0); }),
      "twice");
  EXPECT_CONTAINS(error_of([&] { parse_safetensors_header("[1,2]", 0); }), "not a JSON object");
  EXPECT_CONTAINS(error_of([&] { parse_safetensors_header(R"("text")", 0); }), "not a JSON object");
  EXPECT_CONTAINS(error_of([&] { parse_safetensors_header(R"({"w":3})", 0); }),
                  "key 'w': entry is not a JSON object");
  EXPECT_CONTAINS(error_of([&] {
                    parse_safetensors_header(
                        R"({"w":{"dtype":"F32","shape":{},"data_offsets":[0,4]}})", 4);
                  }),
                  "no shape array");
}

}  // namespace
}  // namespace shardload
