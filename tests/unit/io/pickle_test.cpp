// The bounded unpickler, the data constructors it interprets, and selection in nested
// checkpoints (no LibTorch in any of them; tensors here are stand-in objects).
#include "io/pickle.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/pickle_data.h"
#include "io/pickle_select.h"

namespace shardload {
namespace {

using Kind = PickleValue::Kind;

std::string from_hex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

std::string le32(uint32_t v) {
  std::string out(4, '\0');
  for (int i = 0; i < 4; ++i) out[i] = static_cast<char>(v >> (8 * i));
  return out;
}

std::string le64(uint64_t v) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>(v >> (8 * i));
  return out;
}

/// A string literal's bytes, NULs included.
template <size_t N>
std::string raw(const char (&literal)[N]) {
  return std::string(literal, N - 1);
}

/// PROTO 2, `body`, STOP.
std::string pickle_of(const std::string& body) { return std::string("\x80\x02", 2) + body + "."; }

PickleHooks no_hooks() {
  PickleHooks h;
  h.allow_global = [](const std::string&, const std::string&) { return false; };
  return h;
}

/// Data globals and a stand-in tensor: `fake.tensor()` makes an object of type "tensor".
PickleHooks data_hooks() {
  PickleHooks h;
  h.allow_global = [](const std::string& module, const std::string& name) {
    return (module == "fake" && name == "tensor") || is_data_global(module, name);
  };
  h.call = [](const PickleValue& callable, const std::vector<PickleValuePtr>& args) {
    if (callable.text == "fake.tensor") {
      auto v = make_pickle_value(Kind::kObject);
      v->type_name = std::string(kPickleTensorType);
      return v;
    }
    return call_data_global(callable, args);
  };
  h.build = [](PickleValue& object, const PickleValuePtr& state) {
    if (!build_data_value(object, state)) throw FormatError("cannot BUILD");
  };
  return h;
}

std::string error_of(const std::string& data, const PickleHooks& hooks,
                     const PickleLimits& limits = {}) {
  try {
    unpickle(data, hooks, limits);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "no exception";
}

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string(haystack).find(needle), std::string::npos) << (haystack)

// ----- bounds

TEST(PickleBounds, RefusesDeepTuplesAndListsWithoutRecursion) {
  const size_t n = 1'000'000;  // would overflow the stack of a recursive reader or destructor
  // Room for a million values, so that the depth limit is what refuses them.
  PickleLimits limits;
  limits.max_state_bytes = uint64_t{2} << 30;
  const std::string tuples = pickle_of(std::string(n, '(') + ")" + std::string(n, 't'));
  EXPECT_CONTAINS(error_of(tuples, no_hooks(), limits), "nested deeper than 200 levels");
  const std::string lists = pickle_of(std::string(n, ']') + std::string(n - 1, 'a'));
  EXPECT_CONTAINS(error_of(lists, no_hooks(), limits), "nested deeper than 200 levels");
  // d1, None, d2, None, d3, ...: each SETITEM puts the dict on top into the one below.
  std::string dicts = "}";
  for (size_t i = 1; i < n; ++i) dicts += "N}";
  EXPECT_CONTAINS(error_of(pickle_of(dicts + std::string(n - 1, 's')), no_hooks(), limits),
                  "nested deeper than 200 levels");
}

TEST(PickleBounds, AcceptsNestingUpToTheLimit) {
  PickleLimits limits;
  limits.max_depth = 50;
  const std::string ok = pickle_of(std::string(51, ']') + std::string(50, 'a'));
  const PickleValuePtr v = unpickle(ok, no_hooks(), limits);
  EXPECT_EQ(v->depth, 50u);
  const std::string deeper = pickle_of(std::string(52, ']') + std::string(51, 'a'));
  EXPECT_CONTAINS(error_of(deeper, no_hooks(), limits), "nested deeper than 50 levels");
}

TEST(PickleBounds, RefusesChangingANestedContainer) {
  // L1 = []; L2 = []; L1.append(L2); then L2.append(L3) through the memo: building top-down
  // like this would hide the depth from a counter, and is how cycles are made.
  const std::string top_down =
      pickle_of(raw("]q\x00]q\x01"
                    "ah\x01]a"));
  EXPECT_CONTAINS(error_of(top_down, no_hooks()), "changed after it was put into another");
  const std::string self =
      pickle_of(raw("]q\x00h\x00"
                    "a"));
  EXPECT_CONTAINS(error_of(self, no_hooks()), "contains itself");
  const std::string dict_cycle = pickle_of(raw("}q\x00(Nh\x00u"));
  EXPECT_CONTAINS(error_of(dict_cycle, no_hooks()), "contains itself");
}

TEST(PickleBounds, OneBudgetOfBytesForValuesStackAndMemo) {
  PickleLimits limits;
  // 20 values and their stack slots: more than 4 KiB of state.
  limits.max_state_bytes = 4096;
  EXPECT_CONTAINS(error_of(pickle_of("(" + std::string(20, 'N') + "t"), no_hooks(), limits),
                  "parsed state: 256 more bytes for a value would pass the limit of 4096 bytes");
  // DUP makes no new value, but every stack slot is charged.
  const uint64_t slots = 4096 / kPickleSlotBytes;
  EXPECT_CONTAINS(error_of(pickle_of("N" + std::string(slots, '2')), no_hooks(), limits),
                  "a stack slot");
  // Memo entries are charged too, and add up with the values in the same budget: 3 values and
  // 40 memo entries fit 4 KiB alone, not together with 10 more values.
  std::string memo = "N";
  for (int i = 0; i < 40; ++i) memo += "q" + std::string(1, static_cast<char>(i));
  EXPECT_NO_THROW(unpickle(pickle_of(memo), no_hooks(), limits));
  EXPECT_CONTAINS(error_of(pickle_of("(" + std::string(10, 'N') + "t0" + memo), no_hooks(), limits),
                  "a memo entry");
  // Rewriting an entry is not a new one.
  std::string rewrite = "N";
  for (int i = 0; i < 100; ++i) rewrite += raw("q\x00");
  EXPECT_NO_THROW(unpickle(pickle_of(rewrite), no_hooks(), limits));
  limits = {};
  limits.max_items = 5;
  EXPECT_CONTAINS(error_of(pickle_of("(" + std::string(6, 'N') + "t"), no_hooks(), limits),
                  "more than 5 items");
  EXPECT_CONTAINS(error_of(pickle_of("](" + std::string(6, 'N') + "e"), no_hooks(), limits),
                  "more than 5 items");
}

TEST(PickleBounds, ChecksLengthsAgainstTheInputBeforeAllocating) {
  // BINUNICODE8 and BINBYTES8 declaring 2^62 bytes; BINUNICODE declaring 4 GiB.
  const std::string what = error_of(pickle_of("\x8d" + le64(uint64_t{1} << 62) + "ab"), no_hooks());
  EXPECT_CONTAINS(what, "a string of 4611686018427387904 bytes, but only 3 remain");
  EXPECT_CONTAINS(what, "(at byte 2)");
  EXPECT_THROW(unpickle(pickle_of("\x8e" + le64(~uint64_t{0}) + "ab"), no_hooks()), FormatError);
  EXPECT_THROW(unpickle(pickle_of("X" + le32(0xFFFFFFFF) + "ab"), no_hooks()), FormatError);
}

TEST(PickleBounds, RefusesHugeAndUnsetMemoIndices) {
  EXPECT_CONTAINS(error_of(pickle_of("j" + le32(0xFFFFFFFF)), no_hooks()),
                  "memo key 4294967295 is not set");
  // A sparse huge index is fine (a map, not an array sized by it).
  const PickleValuePtr v =
      unpickle(pickle_of("Kzr" + le32(0xFFFFFFF0) + "0j" + le32(0xFFFFFFF0)), no_hooks());
  EXPECT_EQ(v->integer, 'z');
}

TEST(PickleBounds, HookErrorsCarryTheByteOffset) {
  PickleHooks h = no_hooks();
  h.persistent_load = [](const PickleValuePtr&) -> PickleValuePtr {
    throw FormatError("storage is gone");
  };
  EXPECT_CONTAINS(error_of(pickle_of("NNQ"), h), "pickle: storage is gone (at byte 4)");
}

// ----- data constructors

TEST(PickleData, ReadsNumpyScalarsBytesAndSizesAsPlainValues) {
  // Python: pickle.dumps({"f8": np.float64(0.5), "i8": np.int64(-3), "f4": np.float32(1.5),
  // "b": np.bool_(True), "u1": np.uint8(200), "f2": np.float16(-2.0),
  // "size": torch.Size([2, 3]), "bytes": b"a\xffb"}, protocol=2), numpy 2.
  const std::string data = from_hex(
      "80027d710028580200000066387101636e756d70792e5f636f72652e6d756c746961727261790a7363616c61"
      "720a7102636e756d70790a64747970650a71035802000000663871048988877105527106284b035801000000"
      "3c71074e4e4e4affffffff4affffffff4b0074710862635f636f646563730a656e636f64650a710958090000"
      "00000000000000c3a03f710a58060000006c6174696e31710b86710c52710d86710e52710f58020000006938"
      "7110680268035802000000693871118988877112527113284b0368074e4e4e4affffffff4affffffff4b0074"
      "71146268095810000000c3bdc3bfc3bfc3bfc3bfc3bfc3bfc3bf7115680b86711652711786711852711958020"
      "000006634711a6802680358020000006634711b898887711c52711d284b0368074e4e4e4affffffff4affffff"
      "ff4b0074711e62680958050000000000c3803f711f680b8671205271218671225271235801000000627124680"
      "268035802000000623171258988877126527127284b0358010000007c71284e4e4e4affffffff4affffffff4b"
      "00747129626809580100000001712a680b86712b52712c86712d52712e58020000007531712f680268035802"
      "000000753171308988877131527132284b0368284e4e4e4affffffff4affffffff4b00747133626809580200"
      "0000c3887134680b8671355271368671375271385802000000663271396802680358020000006632713a8988"
      "87713b52713c284b0368074e4e4e4affffffff4affffffff4b0074713d626809580300000000c380713e680b"
      "86713f527140867141527142580400000073697a65714363746f7263680a53697a650a71444b024b03867145"
      "8571465271475805000000627974657371486809580400000061c3bf627149680b86714a52714b752e");
  const PickleValuePtr v = unpickle(data, data_hooks());
  ASSERT_EQ(v->kind, Kind::kDict);
  ASSERT_EQ(v->entries.size(), 8u);
  auto at = [&](size_t i) { return v->entries[i].second; };
  EXPECT_EQ(at(0)->kind, Kind::kFloat);
  EXPECT_EQ(at(0)->floating, 0.5);
  EXPECT_EQ(at(1)->kind, Kind::kInt);
  EXPECT_EQ(at(1)->integer, -3);
  EXPECT_EQ(at(2)->floating, 1.5);
  EXPECT_EQ(at(3)->kind, Kind::kBool);
  EXPECT_TRUE(at(3)->boolean);
  EXPECT_EQ(at(4)->integer, 200);
  EXPECT_EQ(at(5)->floating, -2.0);
  ASSERT_EQ(at(6)->kind, Kind::kTuple);
  ASSERT_EQ(at(6)->items.size(), 2u);
  EXPECT_EQ(at(6)->items[1]->integer, 3);
  EXPECT_EQ(at(7)->kind, Kind::kBytes);
  EXPECT_EQ(at(7)->text, std::string("a\xff"
                                     "b"));
}

TEST(PickleData, RefusesBigEndianScalarsAndBadArguments) {
  // pickle.dumps(np.dtype('>f8'), protocol=2) used for a scalar of 8 bytes.
  const std::string dtype_be = from_hex(
      "636e756d70790a64747970650a71005802000000663871018988877102527103284b0358010000003e71044e"
      "4e4e4affffffff4affffffff4b00747105");  // the dtype on the stack, BUILD pending
  const std::string scalar = "cnumpy.core.multiarray\nscalar\n" + dtype_be + "b" + "C\x08" +
                             std::string(8, '\0') + "\x86R";
  EXPECT_CONTAINS(error_of(pickle_of(scalar), data_hooks()), "big-endian numpy scalars");
  // _codecs.encode of text beyond Latin-1.
  const std::string encode =
      "c_codecs\nencode\nX" + le32(2) + "\xc4\x80" + "X" + le32(6) + "latin1\x86R";
  EXPECT_CONTAINS(error_of(pickle_of(encode), data_hooks()), "not Latin-1");
  // OrderedDict of non-pairs.
  const std::string od =
      "ccollections\nOrderedDict\n]K\x01"
      "a\x85R";
  EXPECT_CONTAINS(error_of(pickle_of(od), data_hooks()), "non-pairs");
  // Globals that run code stay refused.
  EXPECT_CONTAINS(error_of(pickle_of("cos\nsystem\n"), data_hooks()),
                  "global 'os.system' is not allowed");
  EXPECT_CONTAINS(error_of(pickle_of("cbuiltins\neval\n"), data_hooks()), "not allowed");
  EXPECT_CONTAINS(error_of(pickle_of("cnumpy\nload\n"), data_hooks()), "not allowed");
}

TEST(PickleData, CopiesByConstructorsCountAgainstTheLimits) {
  // A memoized list of 100 pairs made into an OrderedDict 20 times: 4000 entries from 500
  // bytes of pickle.
  std::string od =
      raw("ccollections\nOrderedDict\nq\x01"
          "0]q\x00(");
  for (int i = 0; i < 100; ++i) od += "NN\x86";
  od += "e0";
  for (int i = 0; i < 20; ++i) od += raw("h\x01h\x00\x85R0");
  PickleLimits limits;
  limits.max_state_bytes = 4000 * kPickleSlotBytes;
  EXPECT_CONTAINS(error_of(pickle_of(od + "N"), data_hooks(), limits),
                  "would pass the limit of " + std::to_string(limits.max_state_bytes));
  EXPECT_NO_THROW(unpickle(pickle_of(od + "N"), data_hooks()));
  // A memoized 1000-byte str encoded to bytes 20 times.
  std::string enc = raw("c_codecs\nencode\nq\x01X") + le32(1000) + std::string(1000, 'a') +
                    raw("q\x00X") + le32(6) +
                    raw("latin1q\x02"
                        "000");
  for (int i = 0; i < 20; ++i) enc += raw("h\x01h\x00h\x02\x86R0");
  limits = {};
  limits.max_state_bytes = 20000;
  EXPECT_CONTAINS(error_of(pickle_of(enc + "N"), data_hooks(), limits),
                  "would pass the limit of 20000 bytes");
}

// ----- selection in nested checkpoints

/// {key: value} pairs written by `body` into a fresh OrderedDict.
void dict_of(PickleWriter& w, const std::function<void(PickleWriter&)>& body) {
  w.global("collections", "OrderedDict");
  w.empty_tuple();
  w.reduce();
  w.mark();
  body(w);
  w.set_items();
}

void tensor(PickleWriter& w) {
  w.global("fake", "tensor");
  w.empty_tuple();
  w.reduce();
}

/// {"model": {"w": T, "b": T, "sub": {"x": T}}, "optimizer": {"state": {0: {"m": T}},
///  "lr": 3, "betas": (1, 2)}, "epoch": 7, "name": "run", "flag": True}
PickleValuePtr nested_checkpoint() {
  PickleWriter w;
  dict_of(w, [](PickleWriter& w) {
    w.string("model");
    dict_of(w, [](PickleWriter& w) {
      w.string("w");
      tensor(w);
      w.string("b");
      tensor(w);
      w.string("sub");
      dict_of(w, [](PickleWriter& w) {
        w.string("x");
        tensor(w);
      });
    });
    w.string("optimizer");
    dict_of(w, [](PickleWriter& w) {
      w.string("state");
      dict_of(w, [](PickleWriter& w) {
        w.integer(0);
        dict_of(w, [](PickleWriter& w) {
          w.string("m");
          tensor(w);
        });
      });
      w.string("lr");
      w.integer(3);
      w.string("betas");
      w.int_tuple({1, 2});
    });
    w.string("epoch");
    w.integer(7);
    w.string("name");
    w.string("run");
    w.string("flag");
    w.boolean(true);
  });
  return unpickle(w.finish(), data_hooks());
}

std::vector<std::string> keys_of(const PickleSelection& s) {
  std::vector<std::string> out;
  for (const auto& [key, value] : s.tensors) out.push_back(key);
  return out;
}

TEST(PickleSelect, SelectsASubDictionaryAndFlattensItsNestedDicts) {
  const PickleValuePtr root = nested_checkpoint();
  const PickleSelection model = select_tensors(root, "model");
  EXPECT_EQ(keys_of(model), (std::vector<std::string>{"w", "b", "sub.x"}));
  const std::vector<std::pair<std::string, std::string>> scalars = {{"optimizer.lr", "3"},
                                                                    {"optimizer.betas", "(1, 2)"},
                                                                    {"epoch", "7"},
                                                                    {"name", "run"},
                                                                    {"flag", "True"}};
  EXPECT_EQ(model.scalars, scalars);
  ASSERT_EQ(model.other_tensors.size(), 1u);
  EXPECT_EQ(model.other_tensors[0], (std::pair<std::string, size_t>{"optimizer.state.0", 1}));

  EXPECT_EQ(keys_of(select_tensors(root, "optimizer")), std::vector<std::string>{"state.0.m"});
  EXPECT_EQ(keys_of(select_tensors(root, "optimizer.state.0")), std::vector<std::string>{"m"});
  EXPECT_EQ(keys_of(select_tensors(root, "model.sub")), std::vector<std::string>{"x"});
  EXPECT_EQ(keys_of(select_tensors(root, ".")),
            (std::vector<std::string>{"model.w", "model.b", "model.sub.x", "optimizer.state.0.m"}));
}

TEST(PickleSelect, MatchesKeysThatContainDots) {
  PickleWriter w;
  dict_of(w, [](PickleWriter& w) {
    w.string("module.encoder");
    dict_of(w, [](PickleWriter& w) {
      w.string("w");
      tensor(w);
    });
    w.string("module");
    dict_of(w, [](PickleWriter& w) {
      w.string("decoder");
      dict_of(w, [](PickleWriter& w) {
        w.string("v");
        tensor(w);
      });
    });
  });
  const PickleValuePtr root = unpickle(w.finish(), data_hooks());
  EXPECT_EQ(keys_of(select_tensors(root, "module.encoder")), std::vector<std::string>{"w"});
  EXPECT_EQ(keys_of(select_tensors(root, "module.decoder")), std::vector<std::string>{"v"});
}

TEST(PickleSelect, NamesWhatItCannotSelect) {
  const PickleValuePtr root = nested_checkpoint();
  try {
    select_tensors(root, "modle");
    FAIL() << "no exception";
  } catch (const UsageError& e) {
    EXPECT_CONTAINS(e.what(), "no key 'modle' in the top level");
    EXPECT_CONTAINS(e.what(), "'model', 'optimizer', 'epoch'");
  }
  try {
    select_tensors(root, "epoch");
    FAIL() << "no exception";
  } catch (const UsageError& e) {
    EXPECT_CONTAINS(e.what(), "'epoch' is a int, not a dict");
  }
  EXPECT_THROW(select_tensors(root, "model.w"), UsageError);
  EXPECT_THROW(select_tensors(root, ""), UsageError);
}

TEST(PickleSelect, RefusesKeysThatCollideOnceJoined) {
  PickleWriter w;
  dict_of(w, [](PickleWriter& w) {
    w.string("a.b");
    tensor(w);
    w.string("a");
    dict_of(w, [](PickleWriter& w) {
      w.string("b");
      tensor(w);
    });
  });
  const PickleValuePtr root = unpickle(w.finish(), data_hooks());
  try {
    select_tensors(root, ".");
    FAIL() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_CONTAINS(e.what(), "key 'a.b': occurs twice");
  }
}

TEST(PickleSelect, FlatStateDictErrorListsTheSubDictionaries) {
  try {
    flat_state_dict(nested_checkpoint());
    FAIL() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_CONTAINS(e.what(), "key 'model': expected a tensor, found a dict");
    EXPECT_CONTAINS(e.what(), "'model' (2 tensors), 'model.sub' (1 tensor)");
    EXPECT_CONTAINS(e.what(), "'optimizer.state.0' (1 tensor)");
    EXPECT_CONTAINS(e.what(), "--select model");
  }
}

TEST(PickleSelect, WalksSharedContainersOnce) {
  // 3^60 paths through a chain of shared tuples: the walk stays linear, not exponential.
  std::string body = "}";
  for (int i = 0; i < 60; ++i) body += "22\x87";  // (x, x, x): each level shares the one below
  PickleLimits limits;
  const PickleValuePtr root = unpickle(pickle_of(body), no_hooks(), limits);
  const PickleSelection s = select_tensors(root, ".");
  EXPECT_TRUE(s.tensors.empty());
  EXPECT_LT(s.skipped.size(), 200u);  // each shared tuple is reported once more, not 3^60 times
}

TEST(PickleSelect, BoundsTheBytesOfKeyPaths) {
  // One 64 KiB key, memoized, used 5000 times one level down: 80 KB of pickle asking for
  // paths of 128 KiB each, 640 MB in all.
  const std::string key = "X" + le32(1 << 16) + std::string(1 << 16, 'k');
  std::string body = "}(" + key + raw("q\x00") + "}(";
  for (int i = 0; i < 5000; ++i) body += raw("h\x00N");
  body += "uu";
  const PickleValuePtr root = unpickle(pickle_of(body), no_hooks());
  try {
    select_tensors(root, ".");
    FAIL() << "no exception";
  } catch (const FormatError& e) {
    EXPECT_CONTAINS(e.what(), "key paths of this file take more than");
  }
}

}  // namespace
}  // namespace shardload
