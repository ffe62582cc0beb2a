// Round trips, the torch 1.x fixture and bad inputs for .pt and .safetensors files.
#include "io/tensor_file.h"

#include <ATen/ATen.h>
#include <caffe2/serialize/inline_container.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/pickle.h"
#include "tests/unit/temp_dir.h"

namespace shardload {
namespace {

namespace fs = std::filesystem;

using shardload::test_util::TempDir;

std::string param_name(const ::testing::TestParamInfo<std::string>& info) {
  return info.param == ".pt" ? "Torch" : "Safetensors";
}

/// True when both tensors have the same dtype, shape and bytes (NaNs and -0.0 included).
::testing::AssertionResult same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type()) {
    return ::testing::AssertionFailure()
           << "dtype " << a.scalar_type() << " vs " << b.scalar_type();
  }
  if (a.sizes() != b.sizes()) {
    return ::testing::AssertionFailure() << "shape " << a.sizes() << " vs " << b.sizes();
  }
  const at::Tensor ca = a.contiguous();
  const at::Tensor cb = b.contiguous();
  if (ca.nbytes() > 0 && std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) != 0) {
    return ::testing::AssertionFailure() << "values differ: " << a << " vs " << b;
  }
  return ::testing::AssertionSuccess();
}

void expect_same(const TensorList& expected, const TensorList& actual) {
  ASSERT_EQ(expected.size(), actual.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    EXPECT_EQ(expected[i].key, actual[i].key);
    EXPECT_TRUE(same_bits(expected[i].tensor, actual[i].tensor)) << expected[i].key;
    EXPECT_TRUE(actual[i].tensor.is_contiguous()) << expected[i].key;
  }
}

/// Deterministic values of every dtype, negative ones and NaN where the dtype has them.
TensorList every_dtype() {
  const at::Tensor base = at::arange(-6, 6, at::kDouble).reshape({3, 4}) * 0.75;
  TensorList list;
  for (auto dtype : {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16, at::kLong, at::kInt,
                     at::kShort, at::kChar}) {
    list.push_back({std::string("t.") + c10::toString(dtype), base.to(dtype)});
  }
  list.push_back({"t.Byte", at::arange(0, 250, 21, at::kLong).to(at::kByte)});
  list.push_back({"t.Bool", at::arange(7, at::kLong).remainder(3).eq(0)});
  list.push_back(
      {"t.float_specials", at::tensor({0.0, -0.0, std::numeric_limits<double>::infinity(),
                                       std::numeric_limits<double>::quiet_NaN(), 1e-310},
                                      at::kDouble)
                               .to(at::kFloat)});
  list.push_back({"t.int64_extremes", at::tensor({std::numeric_limits<int64_t>::min(),
                                                  std::numeric_limits<int64_t>::max(), int64_t{-1}},
                                                 at::kLong)});
  return list;
}

class TensorFileTest : public ::testing::TestWithParam<std::string> {
 protected:
  std::string file(const std::string& stem) const { return dir_.file(stem + GetParam()); }
  TempDir dir_;
};

INSTANTIATE_TEST_SUITE_P(Formats, TensorFileTest, ::testing::Values(".pt", ".safetensors"),
                         param_name);

TEST_P(TensorFileTest, RoundTripsEveryDtype) {
  const TensorList tensors = every_dtype();
  write_tensor_file(file("model"), tensors);
  expect_same(tensors, read_tensor_file(file("model")));
}

TEST_P(TensorFileTest, RoundTripsScalarsAndZeroSize) {
  const TensorList tensors = {
      {"scalar_f32", at::scalar_tensor(2.5, at::kFloat)},
      {"scalar_i64", at::scalar_tensor(7, at::kLong)},
      {"scalar_bool", at::scalar_tensor(true, at::kBool)},
      {"scalar_bf16", at::scalar_tensor(-1.5, at::kBFloat16)},
      {"empty", at::empty({0}, at::kFloat)},
      {"empty_2x0x3", at::empty({2, 0, 3}, at::kHalf)},
      {"after_empty", at::arange(3, at::kInt)},
  };
  write_tensor_file(file("model"), tensors);
  expect_same(tensors, read_tensor_file(file("model")));
}

TEST_P(TensorFileTest, RoundTripsEmptyStateDict) {
  write_tensor_file(file("model"), {});
  EXPECT_TRUE(read_tensor_file(file("model")).empty());
}

TEST_P(TensorFileTest, WritesNonContiguousInputsContiguous) {
  const at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  const TensorList tensors = {
      {"transposed", base.t()}, {"sliced", base.slice(1, 1, 6, 2)},
      {"offset_row", base[2]},  {"expanded", at::arange(3, at::kShort).unsqueeze(0).expand({4, 3})},
      {"base", base},
  };
  ASSERT_FALSE(tensors[0].tensor.is_contiguous());
  write_tensor_file(file("model"), tensors);
  expect_same(tensors, read_tensor_file(file("model")));
}

TEST_P(TensorFileTest, KeepsUnusualKeysAndOrder) {
  const TensorList tensors = {
      {"z.last.first", at::ones({1}, at::kFloat)},
      {"gr\xC3\xB6\xC3\x9F"
       "e.\xCE\xB3",
       at::ones({2}, at::kFloat)},
      {"a/b//c", at::ones({3}, at::kFloat)},
      {"with space", at::ones({4}, at::kFloat)},
      {"quote'\"\\back", at::ones({5}, at::kFloat)},
      {"", at::ones({6}, at::kFloat)},
      {"emoji \xF0\x9F\x98\x80", at::ones({7}, at::kFloat)},
  };
  write_tensor_file(file("model"), tensors);
  expect_same(tensors, read_tensor_file(file("model")));
}

TEST_P(TensorFileTest, RejectsDuplicateAndUnsupportedInputsOnWrite) {
  EXPECT_THROW(write_tensor_file(file("dup"), {{"a", at::ones({1})}, {"a", at::ones({1})}}),
               UsageError);
  EXPECT_THROW(write_tensor_file(file("cplx"), {{"c", at::empty({1}, at::kBits8)}}), UsageError);
  EXPECT_THROW(write_tensor_file(file("utf8"), {{"bad\xFF", at::ones({1})}}), UsageError);
  EXPECT_FALSE(fs::exists(file("dup")));
}

TEST_P(TensorFileTest, MissingFileNamesThePath) {
  const std::string path = file("does-not-exist");
  try {
    read_tensor_file(path);
    FAIL() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

TEST_P(TensorFileTest, TruncatedAndCorruptFilesNameThePath) {
  const std::string good = file("good");
  write_tensor_file(good, every_dtype());
  const auto size = fs::file_size(good);
  std::string bytes(size, '\0');
  std::ifstream(good, std::ios::binary).read(bytes.data(), static_cast<std::streamsize>(size));

  auto expect_error = [&](const std::string& name, const std::string& content) {
    const std::string path = file(name);
    std::ofstream(path, std::ios::binary).write(content.data(), content.size());
    try {
      read_tensor_file(path);
      ADD_FAILURE() << name << ": no exception";
    } catch (const FormatError& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    }
  };
  for (size_t cut : {size_t{0}, size_t{3}, size_t{7}, size_t{9}, size / 2, size - 1}) {
    expect_error("cut" + std::to_string(cut), bytes.substr(0, cut));
  }
  expect_error("garbage", std::string(4096, 'x'));
  std::string flipped = bytes;
  for (size_t i = 0; i < 8; ++i) flipped[i] = static_cast<char>(0xff);
  expect_error("header", flipped);
}

// ----- .pt specifics

const std::string kFixtures = SHARDLOAD_FIXTURES_DIR;

/// Writes a zip in torch.save's layout with `pickle` as data.pkl and `records` beside it.
void write_pt(const std::string& path, const std::string& pickle,
              const std::vector<std::pair<std::string, std::string>>& records = {}) {
  caffe2::serialize::PyTorchStreamWriter zip(path);
  zip.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (const auto& [name, data] : records) zip.writeRecord(name, data.data(), data.size());
  zip.writeEndOfFile();
}

/// Python's pickle.dumps(..., protocol=2) of what the callback writes, ending in STOP.
std::string small_pickle(const std::function<void(PickleWriter&)>& body) {
  PickleWriter w;
  body(w);
  return w.finish();
}

void write_safetensors_raw(const std::string& path, const std::string& header,
                           const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(uint64_t{header.size()} >> (8 * i));
  std::ofstream(path, std::ios::binary) << out << header << data;
}

std::string read_error(const std::string& path) {
  try {
    read_tensor_file(path);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "no exception";
}

TEST(TorchFile, ReadsTheTorch1Fixture) {
  // Written by tests/fixtures/make_torch1_fixture.py with Debian's torch 1.13: an OrderedDict
  // with _metadata, no byteorder record, archive folder named after the file, and three tensors
  // (lin.weight, weight_t, weight_row1) sharing one storage.
  const TensorList sd = read_tensor_file(kFixtures + "/torch1_state_dict.pt");
  const at::Tensor w = at::arange(6, at::kFloat).reshape({2, 3}) * 0.5;
  const TensorList expected = {
      {"bf16", at::arange(4, at::kBFloat16) * 0.25},
      {"mask", at::tensor({1, 0, 1}, at::kByte).to(at::kBool)},
      {"weight_t", w.t()},
      {"weight_row1", at::tensor({2.0f, 2.5f})},
      {"lin.weight", w},
      {"lin.bias", at::tensor({-1.0f, 1.0f})},
      {"bn.weight", at::tensor({1.5f, 2.5f})},
      {"bn.bias", at::tensor({-0.125f, 0.125f})},
      {"bn.running_mean", at::tensor({0.25f, -0.25f})},
      {"bn.running_var", at::tensor({2.0f, 4.0f})},
      {"bn.num_batches_tracked", at::scalar_tensor(7, at::kLong)},
  };
  expect_same(expected, sd);
}

TEST(TorchFile, WritesTheRecordsTorchSaveWrites) {
  TempDir dir;
  const std::string path = dir.file("m.pt");
  write_tensor_file(path, {{"a", at::ones({2})}, {"b", at::zeros({3}, at::kLong)}});
  caffe2::serialize::PyTorchStreamReader zip(path);
  for (const char* name : {"data.pkl", "byteorder", "version", "data/0", "data/1"}) {
    EXPECT_TRUE(zip.hasRecord(name)) << name;
  }
  auto [ptr, n] = zip.getRecord("byteorder");
  EXPECT_EQ(std::string(static_cast<const char*>(ptr.get()), n), "little");
  EXPECT_EQ(zip.getRecordSize("data/1"), 3 * sizeof(int64_t));
}

TEST(TorchFile, RejectsDisallowedGlobalsWithoutCallingThem) {
  TempDir dir;
  const std::string path = dir.file("evil.pt");
  // {'x': os.system('touch pwned')}
  write_pt(path, small_pickle([](PickleWriter& w) {
             w.global("collections", "OrderedDict");
             w.empty_tuple();
             w.reduce();
             w.mark();
             w.string("x");
             w.global("os", "system");
             w.mark();
             w.string("touch pwned");
             w.tuple_from_mark();
             w.reduce();
             w.set_items();
           }));
  const std::string what = read_error(path);
  EXPECT_NE(what.find(path), std::string::npos) << what;
  EXPECT_NE(what.find("os.system"), std::string::npos) << what;
  EXPECT_NE(what.find("not allowed"), std::string::npos) << what;
}

TEST(TorchFile, RejectsNonTensorValuesNamingTheKey) {
  TempDir dir;
  const std::string path = dir.file("int.pt");
  write_pt(path, small_pickle([](PickleWriter& w) {
             w.global("collections", "OrderedDict");
             w.empty_tuple();
             w.reduce();
             w.mark();
             w.string("epoch");
             w.integer(3);
             w.set_items();
           }));
  const std::string what = read_error(path);
  EXPECT_NE(what.find("In " + path + ": key 'epoch'"), std::string::npos) << what;
  EXPECT_NE(what.find("found a int"), std::string::npos) << what;
}

TEST(TorchFile, RejectsANonDictTopLevel) {
  TempDir dir;
  const std::string path = dir.file("list.pt");
  write_pt(path, small_pickle([](PickleWriter& w) { w.int_tuple({1, 2}); }));
  const std::string what = read_error(path);
  EXPECT_NE(what.find("found a tuple"), std::string::npos) << what;
}

TEST(TorchFile, RejectsStoragesTooSmallForTheirTensors) {
  TempDir dir;
  const std::string path = dir.file("short.pt");
  // A 2x3 float tensor over a storage record of 8 bytes.
  write_pt(path, small_pickle([](PickleWriter& w) {
             w.global("collections", "OrderedDict");
             w.empty_tuple();
             w.reduce();
             w.mark();
             w.string("w");
             w.global("torch._utils", "_rebuild_tensor_v2");
             w.mark();
             w.mark();
             w.string("storage");
             w.global("torch", "FloatStorage");
             w.string("0");
             w.string("cpu");
             w.integer(2);
             w.tuple_from_mark();
             w.persistent_id();
             w.integer(0);
             w.int_tuple({2, 3});
             w.int_tuple({3, 1});
             w.boolean(false);
             w.global("collections", "OrderedDict");
             w.empty_tuple();
             w.reduce();
             w.tuple_from_mark();
             w.reduce();
             w.set_items();
           }),
           {{"data/0", std::string(8, '\0')}});
  const std::string what = read_error(path);
  EXPECT_NE(what.find(path), std::string::npos) << what;
  EXPECT_NE(what.find("data/0"), std::string::npos) << what;
}

TEST(TorchFile, RejectsBigEndianFiles) {
  TempDir dir;
  const std::string path = dir.file("be.pt");
  write_pt(path, small_pickle([](PickleWriter& w) {
             w.global("collections", "OrderedDict");
             w.empty_tuple();
             w.reduce();
           }),
           {{"byteorder", "big"}});
  EXPECT_NE(read_error(path).find("byte order 'big'"), std::string::npos) << read_error(path);
}

TEST(TorchFile, RejectsTheLegacyFormat) {
  TempDir dir;
  const std::string path = dir.file("legacy.pt");
  std::ofstream(path, std::ios::binary) << "\x80\x02\x8a\x0alegacy magic";
  EXPECT_NE(read_error(path).find("legacy"), std::string::npos) << read_error(path);
}

// ----- the pickle layer on its own

PickleHooks no_hooks() {
  PickleHooks h;
  h.allow_global = [](const std::string&, const std::string&) { return false; };
  return h;
}

TEST(Pickle, IntegersRoundTrip) {
  const std::vector<int64_t> values = {0,  1,    255,       256,       65535,     65536,
                                       -1, -129, 1LL << 31, INT32_MIN, INT64_MIN, INT64_MAX};
  const std::string data = small_pickle([&](PickleWriter& w) { w.int_tuple(values); });
  const PickleValuePtr v = unpickle(data, no_hooks());
  ASSERT_EQ(v->kind, PickleValue::Kind::kTuple);
  ASSERT_EQ(v->items.size(), values.size());
  for (size_t i = 0; i < values.size(); ++i) EXPECT_EQ(v->items[i]->integer, values[i]);
}

TEST(Pickle, ReadsPythonProtocol2And4Opcodes) {
  // Python's pickle.dumps({'a': [1, 2.5, None, True]}, protocol=4): FRAME, MEMOIZE,
  // SHORT_BINUNICODE, EMPTY_LIST, APPENDS, BINFLOAT, NONE, NEWTRUE, SETITEM.
  const std::string data(
      "\x80\x04\x95\x19\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01"
      "a\x94]\x94(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88"
      "es.",
      36);
  const PickleValuePtr v = unpickle(data, no_hooks());
  ASSERT_EQ(v->kind, PickleValue::Kind::kDict);
  ASSERT_EQ(v->entries.size(), 1u);
  EXPECT_EQ(v->entries[0].first->text, "a");
  const auto& list = v->entries[0].second;
  ASSERT_EQ(list->kind, PickleValue::Kind::kList);
  ASSERT_EQ(list->items.size(), 4u);
  EXPECT_EQ(list->items[0]->integer, 1);
  EXPECT_EQ(list->items[1]->floating, 2.5);
  EXPECT_EQ(list->items[2]->kind, PickleValue::Kind::kNone);
  EXPECT_TRUE(list->items[3]->boolean);
}

TEST(Pickle, RejectsUnknownOpcodesAndTruncation) {
  EXPECT_THROW(unpickle(std::string("\x80\x02\xff", 3), no_hooks()), FormatError);
  EXPECT_THROW(unpickle(std::string("\x80\x02X\x10\x00\x00\x00"
                                    "ab",
                                    9),
                        no_hooks()),
               FormatError);
  EXPECT_THROW(unpickle(std::string("\x80\x02", 2), no_hooks()), FormatError);
  EXPECT_THROW(unpickle(std::string("\x80\x02K\x01K\x02.", 7), no_hooks()), FormatError);
  EXPECT_THROW(unpickle(std::string("\x80\x02h\x05.", 5), no_hooks()), FormatError);
}

// ----- .safetensors specifics

TEST(Safetensors, ReadsInDataOrderAndIgnoresMetadata) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  std::string data(12, '\0');
  const float b[] = {1.0f, 2.0f};
  const int32_t a = 7;
  std::memcpy(data.data(), b, 8);
  std::memcpy(data.data() + 8, &a, 4);
  write_safetensors_raw(path,
                        R"({"a":{"dtype":"I32","shape":[],"data_offsets":[8,12]},)"
                        R"("__metadata__":{"format":"pt"},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                        data);
  const TensorList sd = read_tensor_file(path);
  ASSERT_EQ(sd.size(), 2u);
  EXPECT_EQ(sd[0].key, "b");
  EXPECT_TRUE(same_bits(sd[0].tensor, at::tensor({1.0f, 2.0f})));
  EXPECT_EQ(sd[1].key, "a");
  EXPECT_TRUE(same_bits(sd[1].tensor, at::scalar_tensor(7, at::kInt)));
}

TEST(Safetensors, BadHeadersNameFileAndKey) {
  TempDir dir;
  struct Case {
    std::string header;
    std::string expect;
  };
  const std::vector<Case> cases = {
      {R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "key 'w'"},
      {R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}})", "key 'w'"},
      {R"({"w":{"dtype":"C128","shape":[1],"data_offsets":[0,16]}})", "unsupported dtype 'C128'"},
      {R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", "key 'w'"},
      {R"({"w":{"dtype":"F32","shape":[2]}})", "key 'w'"},
      {R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
       R"("v":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}})",
       "overlaps"},
      {R"({"w":{"dtype":"F32")", "not valid JSON"},
      {R"([1, 2])", "not a JSON object"},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string path = dir.file("bad" + std::to_string(i) + ".safetensors");
    write_safetensors_raw(path, cases[i].header, std::string(8, '\0'));
    const std::string what = read_error(path);
    EXPECT_NE(what.find("In " + path + ": "), std::string::npos) << what;
    EXPECT_NE(what.find(cases[i].expect), std::string::npos) << what;
  }
}

// ----- hostile .pt and .safetensors files, nested checkpoints

/// Writes `torch._utils._rebuild_tensor_v2(storage key, offset, size, stride, False, {})`.
void rebuilt_tensor(PickleWriter& w, const std::string& storage_class, const std::string& key,
                    int64_t numel, int64_t offset, const std::vector<int64_t>& size,
                    const std::vector<int64_t>& stride) {
  w.global("torch._utils", "_rebuild_tensor_v2");
  w.mark();
  w.mark();
  w.string("storage");
  w.global("torch", storage_class);
  w.string(key);
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

/// A pickle of OrderedDict{key: tensor written by `value`}.
std::string one_tensor_pickle(const std::string& key,
                              const std::function<void(PickleWriter&)>& value) {
  return small_pickle([&](PickleWriter& w) {
    w.global("collections", "OrderedDict");
    w.empty_tuple();
    w.reduce();
    w.mark();
    w.string(key);
    value(w);
    w.set_items();
  });
}

TEST(TorchFileBounds, MaterializesModestExpansionsAndRefusesHugeOnes) {
  TempDir dir;
  const std::string ok = dir.file("expand.pt");
  const std::string three_floats(12, '\0');
  write_pt(ok,
           one_tensor_pickle("e",
                             [](PickleWriter& w) {
                               rebuilt_tensor(w, "FloatStorage", "0", 3, 0, {4, 3}, {0, 1});
                             }),
           {{"data/0", three_floats}});
  const TensorList sd = read_tensor_file(ok);
  ASSERT_EQ(sd.size(), 1u);
  EXPECT_EQ(sd[0].tensor.sizes(), (std::vector<int64_t>{4, 3}));

  // 2^20 x 2^20 x 4 bytes = 4 TiB from a 4-byte storage.
  const std::string huge = dir.file("huge.pt");
  write_pt(
      huge,
      one_tensor_pickle("e",
                        [](PickleWriter& w) {
                          rebuilt_tensor(w, "FloatStorage", "0", 1, 0, {1 << 20, 1 << 20}, {0, 0});
                        }),
      {{"data/0", std::string(4, '\0')}});
  const std::string what = read_error(huge);
  EXPECT_NE(what.find("In " + huge + ": "), std::string::npos) << what;
  EXPECT_NE(what.find("stride-0 expansion"), std::string::npos) << what;
}

TEST(TorchFileBounds, RefusesOverflowingShapesAndViewsOutsideTheirStorage) {
  TempDir dir;
  const std::string overflow = dir.file("overflow.pt");
  write_pt(overflow,
           one_tensor_pickle("w",
                             [](PickleWriter& w) {
                               rebuilt_tensor(w, "FloatStorage", "0", 1, 0,
                                              {1LL << 32, 1LL << 32, 1LL << 32}, {0, 0, 0});
                             }),
           {{"data/0", std::string(4, '\0')}});
  EXPECT_NE(read_error(overflow).find("overflows 64 bits"), std::string::npos)
      << read_error(overflow);
  const std::string empty_overflow = dir.file("empty_overflow.pt");
  write_pt(empty_overflow,
           one_tensor_pickle(
               "w",
               [](PickleWriter& w) {
                 rebuilt_tensor(w, "FloatStorage", "0", 1, 0, {0, 1LL << 40, 1LL << 40}, {1, 1, 1});
               }),
           {{"data/0", std::string(4, '\0')}});
  EXPECT_NE(read_error(empty_overflow).find("overflows"), std::string::npos)
      << read_error(empty_overflow);
  const std::string outside = dir.file("outside.pt");
  write_pt(outside,
           one_tensor_pickle("w",
                             [](PickleWriter& w) {
                               rebuilt_tensor(w, "FloatStorage", "0", 4, 2, {2, 2}, {2, 1});
                             }),
           {{"data/0", std::string(16, '\0')}});
  EXPECT_NE(read_error(outside).find("reaches element 5"), std::string::npos)
      << read_error(outside);
  const std::string missing = dir.file("missing.pt");
  write_pt(missing, one_tensor_pickle("w", [](PickleWriter& w) {
             rebuilt_tensor(w, "FloatStorage", "7", 1, 0, {1}, {1});
           }));
  EXPECT_NE(read_error(missing).find("record 'data/7' is missing"), std::string::npos)
      << read_error(missing);
}

TEST(TorchFileBounds, RefusesZipMembersThatLieAboutTheirSize) {
  TempDir dir;
  const std::string path = dir.file("lie.pt");
  write_tensor_file(path, {{"w", at::ones({4})}});
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  // data.pkl's central directory entry declares 2^31 bytes (compressed and not).
  const size_t entry = bytes.find(std::string("PK\x01\x02", 4));
  ASSERT_NE(entry, std::string::npos);
  for (size_t field : {20, 24}) {
    const uint32_t lie = 1u << 31;
    std::memcpy(bytes.data() + entry + field, &lie, 4);
  }
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), bytes.size());
  const std::string what = read_error(path);
  EXPECT_NE(what.find("In " + path + ": zip: member"), std::string::npos) << what;
  EXPECT_NE(what.find("data.pkl"), std::string::npos) << what;
}

/// _rebuild_tensor_v3 (torch.save's form for uint16-64, complex32, float8, float4): a storage of
/// `storage_module`.`storage_class` counting `numel`, and `dtype` as the last argument (a global
/// `torch.<dtype>`, or the integer 7 when `dtype` is empty).
void rebuilt_tensor_v3(PickleWriter& w, const std::string& storage_module,
                       const std::string& storage_class, int64_t numel, int64_t offset,
                       const std::vector<int64_t>& size, const std::vector<int64_t>& stride,
                       const std::string& dtype) {
  w.global("torch._utils", "_rebuild_tensor_v3");
  w.mark();
  w.mark();
  w.string("storage");
  w.global(storage_module, storage_class);
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
  if (dtype.empty()) {
    w.integer(7);
  } else {
    w.global("torch", dtype);
  }
  w.tuple_from_mark();
  w.reduce();
}

TEST(TorchFileBounds, RebuildV3ChecksItsDtypeAndItsUntypedStorage) {
  TempDir dir;
  auto write = [&](const std::string& name, const std::function<void(PickleWriter&)>& value) {
    const std::string pt = dir.file(name);
    write_pt(pt, one_tensor_pickle("w", value), {{"data/0", std::string(8, '\x38')}});
    return pt;
  };
  // A float8 view of 8 bytes of an untyped storage, strided: read as PyTorch reads it.
  const TensorList ok = read_tensor_file(write("ok.pt", [](PickleWriter& w) {
    rebuilt_tensor_v3(w, "torch.storage", "UntypedStorage", 8, 1, {2, 3}, {1, 2}, "float8_e4m3fn");
  }));
  ASSERT_EQ(ok.size(), 1u);
  EXPECT_EQ(ok[0].tensor.scalar_type(), at::kFloat8_e4m3fn);
  EXPECT_EQ(ok[0].tensor.sizes().vec(), (std::vector<int64_t>{2, 3}));
  // The dtype is not a dtype; the view reaches past the storage's bytes (uint32: 2 elements);
  // a typed storage of another dtype.
  std::string what = read_error(write("int.pt", [](PickleWriter& w) {
    rebuilt_tensor_v3(w, "torch.storage", "UntypedStorage", 8, 0, {2}, {1}, "");
  }));
  EXPECT_NE(what.find("tensor of dtype"), std::string::npos) << what;
  what = read_error(write("past.pt", [](PickleWriter& w) {
    rebuilt_tensor_v3(w, "torch.storage", "UntypedStorage", 8, 0, {3}, {1}, "uint32");
  }));
  EXPECT_NE(what.find("reaches element 2"), std::string::npos) << what;
  what = read_error(write("typed.pt", [](PickleWriter& w) {
    rebuilt_tensor_v3(w, "torch", "FloatStorage", 2, 0, {2}, {1}, "float8_e5m2");
  }));
  EXPECT_NE(what.find("a float8_e5m2 tensor of a float32 storage"), std::string::npos) << what;
  // A storage class or dtype nobody defines is not a global the reader loads.
  what = read_error(write("bits.pt", [](PickleWriter& w) {
    rebuilt_tensor_v3(w, "torch.storage", "UntypedStorage", 8, 0, {2}, {1}, "bits8");
  }));
  EXPECT_NE(what.find("bits8"), std::string::npos) << what;
}

TEST(TorchFileBounds, RefusesBoolBytesOtherThanZeroAndOne) {
  TempDir dir;
  const std::string pt = dir.file("bool.pt");
  write_pt(
      pt,
      one_tensor_pickle(
          "mask", [](PickleWriter& w) { rebuilt_tensor(w, "BoolStorage", "0", 3, 0, {3}, {1}); }),
      {{"data/0", std::string("\x01\x02\x00", 3)}});
  std::string what = read_error(pt);
  EXPECT_NE(what.find("key 'mask': bool element 1 of the chunk"), std::string::npos) << what;
  EXPECT_NE(what.find("holds byte value 2"), std::string::npos) << what;
  const std::string st = dir.file("bool.safetensors");
  write_safetensors_raw(st, R"({"mask":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})",
                        std::string("\x00\xff", 2));
  what = read_error(st);
  EXPECT_NE(what.find("key 'mask': bool element 1"), std::string::npos) << what;
  EXPECT_NE(what.find("holds byte value 255"), std::string::npos) << what;
}

TEST(TorchFileBounds, RefusesKeysWithNulOrBrokenUtf8) {
  TempDir dir;
  const std::string nul = dir.file("nul.pt");
  write_pt(nul,
           one_tensor_pickle(
               std::string("a\0b", 3),
               [](PickleWriter& w) { rebuilt_tensor(w, "FloatStorage", "0", 1, 0, {1}, {1}); }),
           {{"data/0", std::string(4, '\0')}});
  EXPECT_NE(read_error(nul).find("key 'a\\x00b': contains a NUL character"), std::string::npos)
      << read_error(nul);
  const std::string latin = dir.file("latin.pt");
  write_pt(latin,
           one_tensor_pickle(
               "caf\xe9",
               [](PickleWriter& w) { rebuilt_tensor(w, "FloatStorage", "0", 1, 0, {1}, {1}); }),
           {{"data/0", std::string(4, '\0')}});
  EXPECT_NE(read_error(latin).find("key 'caf\\xe9': is not valid UTF-8"), std::string::npos)
      << read_error(latin);
  EXPECT_THROW(write_tensor_file(dir.file("w.pt"), {{std::string("a\0b", 3), at::ones({1})}}),
               UsageError);
  EXPECT_THROW(
      write_tensor_file(dir.file("w.safetensors"), {{std::string("a\0b", 3), at::ones({1})}}),
      UsageError);
}

/// {"model": {"w": T0, "sub": {"b": T1}}, "optimizer": {"state": {0: {"m": T2}}, "lr": 1},
///  "epoch": 3}
void write_nested_checkpoint(const std::string& path) {
  auto dict = [](PickleWriter& w, const std::function<void()>& body) {
    w.global("collections", "OrderedDict");
    w.empty_tuple();
    w.reduce();
    w.mark();
    body();
    w.set_items();
  };
  const std::string pickle = small_pickle([&](PickleWriter& w) {
    dict(w, [&] {
      w.string("model");
      dict(w, [&] {
        w.string("w");
        rebuilt_tensor(w, "FloatStorage", "0", 2, 0, {2}, {1});
        w.string("sub");
        dict(w, [&] {
          w.string("b");
          rebuilt_tensor(w, "LongStorage", "1", 1, 0, {}, {});
        });
      });
      w.string("optimizer");
      dict(w, [&] {
        w.string("state");
        dict(w, [&] {
          w.integer(0);
          dict(w, [&] {
            w.string("m");
            rebuilt_tensor(w, "FloatStorage", "2", 2, 0, {2}, {1});
          });
        });
        w.string("lr");
        w.integer(1);
      });
      w.string("epoch");
      w.integer(3);
    });
  });
  const float w2[] = {1.5f, -2.0f};
  const int64_t b = 9;
  write_pt(path, pickle,
           {{"data/0", std::string(reinterpret_cast<const char*>(w2), 8)},
            {"data/1", std::string(reinterpret_cast<const char*>(&b), 8)},
            {"data/2", std::string(8, '\0')}});
}

TEST(TensorFile, SelectsASubDictionaryOfANestedCheckpoint) {
  TempDir dir;
  const std::string path = dir.file("ckpt.pt");
  write_nested_checkpoint(path);
  const std::string flat = read_error(path);
  EXPECT_NE(flat.find("In " + path + ": key 'model': expected a tensor, found a dict"),
            std::string::npos)
      << flat;
  EXPECT_NE(flat.find("'model' (1 tensor), 'model.sub' (1 tensor), 'optimizer.state.0'"),
            std::string::npos)
      << flat;
  EXPECT_NE(flat.find("--select model"), std::string::npos) << flat;

  const TensorFileContents model = read_tensor_file(path, TensorFileOptions{.select = "model"});
  expect_same({{"w", at::tensor({1.5f, -2.0f})}, {"sub.b", at::scalar_tensor(9, at::kLong)}},
              model.tensors);
  const std::vector<std::pair<std::string, std::string>> metadata = {{"optimizer.lr", "1"},
                                                                     {"epoch", "3"}};
  EXPECT_EQ(model.metadata, metadata);
  ASSERT_EQ(model.other_tensors.size(), 1u);
  EXPECT_EQ(model.other_tensors[0].first, "optimizer.state.0");

  const TensorFileContents state =
      read_tensor_file(path, TensorFileOptions{.select = "optimizer.state"});
  ASSERT_EQ(state.tensors.size(), 1u);
  EXPECT_EQ(state.tensors[0].key, "0.m");
  EXPECT_THROW(read_tensor_file(path, TensorFileOptions{.select = "epoch"}), UsageError);
}

TEST(TensorFile, SelectIsForPtFilesOnly) {
  TempDir dir;
  const std::string path = dir.file("m.safetensors");
  write_tensor_file(path, {{"w", at::ones({2})}}, {{"epoch", "3"}});
  const TensorFileContents all = read_tensor_file(path, TensorFileOptions{.select = "."});
  ASSERT_EQ(all.tensors.size(), 1u);
  EXPECT_EQ(all.metadata,
            (std::vector<std::pair<std::string, std::string>>{{"format", "pt"}, {"epoch", "3"}}));
  EXPECT_THROW(read_tensor_file(path, TensorFileOptions{.select = "model"}), UsageError);
}

TEST_P(TensorFileTest, ReplacesFilesAtomicallyLeavingNoTemporary) {
  const std::string path = file("model");
  write_tensor_file(path, {{"old", at::zeros({3})}});
  write_tensor_file(path, {{"new", at::ones({2})}});
  expect_same({{"new", at::ones({2})}}, read_tensor_file(path));
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(fs::path(path).parent_path())) {
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos) << e.path();
    ++files;
  }
  EXPECT_EQ(files, 1u);
}

TEST(TensorFile, DispatchesByExtension) {
  EXPECT_TRUE(is_tensor_file("a/model.pt"));
  EXPECT_TRUE(is_tensor_file("model.PTH"));
  EXPECT_TRUE(is_tensor_file("pytorch_model.bin"));
  EXPECT_TRUE(is_tensor_file("model.safetensors"));
  EXPECT_FALSE(is_tensor_file("ckpt"));
  EXPECT_FALSE(is_tensor_file("model.h5"));
  EXPECT_THROW(read_tensor_file("model.txt"), FormatError);
}

}  // namespace
}  // namespace shardload
