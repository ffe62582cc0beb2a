// Collective load: read once, the global verdict (identical on every rank), transactional
// failure, dtype conversion, prefix mapping and key filter, and the transport's large messages.
#include <cmath>
#include <filesystem>
#include <map>

#include "loader/shardload.h"
#include "mpi_test_util.h"
#include "transport/communicator.h"
#include "transport/transport.h"

namespace shardload::testing {
namespace {

/// A checkpoint of a few replicated and split tensors, saved collectively.
struct Fixture {
  SharedDir dir{"load"};
  std::string ckpt = dir.path + "/ckpt";
  TensorList full;

  Fixture() {
    full = {{"embed.weight", make_tensor(1, at::kFloat, {10, 6})},
            {"layer.w", make_tensor(2, at::kFloat, {8, 5})},
            {"layer.b", make_tensor(3, at::kFloat, {5})},
            {"norm.w", make_tensor(4, at::kBFloat16, {6})},
            {"steps", make_tensor(5, at::kLong, {})}};
    Partition p = Partition::from_global(full, {{"embed", 0, {}}, {"layer.w", 1, {}}}, world_rank(),
                                         world_size());
    save(p, ckpt, MPI_COMM_WORLD);
  }
  /// The model side: REF tensors set to `fill`, partitioned with the same rules.
  Partition model(const TensorList& ref, std::vector<SplitRule> rules = {}) const {
    return Partition::from_global(ref, rules, world_rank(), world_size());
  }
  TensorList zeros_like_full() const {
    TensorList out;
    for (const auto& t : full) out.push_back({t.key, at::zeros_like(t.tensor)});
    return out;
  }
};

std::string verdict_text(const LoadResult& r) {
  std::string s;
  for (const auto& k : r.missing_keys) s += "M:" + k + ";";
  for (const auto& k : r.unexpected_keys) s += "U:" + k + ";";
  for (const auto& m : r.size_mismatches) s += "S:" + m.key + ";";
  for (const auto& c : r.dtype_conversions) s += "C:" + c.key + ";";
  return s + r.error;
}

TEST(Load, StrictLoadIsBitExactAndReadsEachByteOnce) {
  Fixture f;
  Partition p = f.model(f.zeros_like_full(), {{"layer.w", 0, {}}});  // a different layout
  LoadResult r = load(p, f.ckpt, MPI_COMM_WORLD);
  EXPECT_TRUE(r.ok);
  // Host tensors on every rank: the default message size is the host one.
  EXPECT_EQ(r.message_bytes, kHostMessageBytes);
  int64_t stored = 0;
  for (const auto& t : f.full) stored += static_cast<int64_t>(t.tensor.nbytes());
  // Every stored byte is needed by some rank, and is read from disk exactly once in total.
  EXPECT_EQ(r.bytes_needed_total, stored);
  EXPECT_EQ(r.bytes_read_total, stored);
  Partition expect = f.model(f.full, {{"layer.w", 0, {}}});
  for (size_t i = 0; i < p.entries().size(); ++i) {
    EXPECT_TRUE(same_bits(p.entries()[i].tensor, expect.entries()[i].tensor)) << p.entries()[i].key;
  }
}

TEST(Load, VerdictIsGlobalIdenticalAndAFailedLoadChangesNothing) {
  Fixture f;
  // Rank 0's model lacks "steps" and has "extra"; the last rank has a mis-sized "layer.b".
  // The verdict is global: missing = keys some rank wants that the checkpoint lacks.
  TensorList ref = f.zeros_like_full();
  ref.erase(ref.begin() + 4);  // steps: unexpected
  ref.push_back({"extra", at::full({3}, 7.0)});
  ref[2].tensor = at::zeros({6});  // layer.b: size mismatch
  Partition p = f.model(ref);
  std::vector<at::Tensor> before;
  for (const auto& e : p.entries()) before.push_back(e.tensor.clone());
  LoadResult result;
  try {
    load(p, f.ckpt, MPI_COMM_WORLD, {.name = "Net"});
    ADD_FAILURE() << "strict load should fail";
  } catch (const LoadVerdictError& e) {
    result = e.result();
  }
  EXPECT_EQ(result.missing_keys, std::vector<std::string>{"extra"});
  EXPECT_EQ(result.unexpected_keys, std::vector<std::string>{"steps"});
  ASSERT_EQ(result.size_mismatches.size(), 1u);
  EXPECT_EQ(result.size_mismatches[0].key, "layer.b");
  EXPECT_EQ(result.error,
            "Error(s) in loading state_dict for Net:\n\tMissing key(s) in state_dict: \"extra\". "
            "\n\tUnexpected key(s) in state_dict: \"steps\". \n\tsize mismatch for layer.b: "
            "copying a param with shape torch.Size([5]) from checkpoint, the shape in current "
            "model is torch.Size([6]).");
  EXPECT_TRUE(same_on_all_ranks(verdict_text(result)));
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_TRUE(same_bits(before[i], p.entries()[i].tensor)) << p.entries()[i].key;
  }

  // Non-strict still fails on the size mismatch (as PyTorch), unless asked to skip it.
  EXPECT_THROW(load(p, f.ckpt, MPI_COMM_WORLD, {.strict = false}), LoadVerdictError);
  LoadResult loose = load(p, f.ckpt, MPI_COMM_WORLD, {.strict = false, .skip_size_mismatch = true});
  EXPECT_TRUE(loose.ok);
  EXPECT_EQ(loose.missing_keys, std::vector<std::string>{"extra"});
  EXPECT_TRUE(same_bits(p.entries()[4].tensor, at::full({3}, 7.0)));  // missing keeps its values
  EXPECT_TRUE(same_bits(p.entries()[2].tensor, at::zeros({6})));      // skipped mismatch too
  EXPECT_TRUE(same_bits(p.entries()[0].tensor, f.full[0].tensor));
}

TEST(Load, PlainValuesAreKeysOfTheVerdictAndComeBackTyped) {
  SharedDir dir{"values"};
  const std::string ckpt = dir.path + "/ckpt";
  const ValueList values = {
      {"step", Value::of_int(1000)},
      {"sched.base_lrs", Value::list({Value::of_float(0.1), Value::of_float(-0.0)})},
      {"data", Value::dict({Value::of_str("epoch"), Value::of_int(3), Value::of_str("name"),
                            Value::of_str("shard-\xce\xb1")})}};
  Partition p;
  p.add("w", make_tensor(1, at::kFloat, {4}));
  save(p, ckpt, MPI_COMM_WORLD, {.values = values});

  LoadOptions options;
  options.value_keys = {"step", "data", "sched.base_lrs"};
  LoadResult r = load(p, ckpt, MPI_COMM_WORLD, options);
  ASSERT_EQ(r.values.size(), 3u);
  EXPECT_EQ(r.values[0].first, "step");
  EXPECT_TRUE(r.values[0].second == values[0].second);
  EXPECT_TRUE(r.values[1].second == values[2].second);
  EXPECT_TRUE(r.values[2].second == values[1].second);
  EXPECT_TRUE(std::signbit(r.values[2].second.items[1].real));

  // A value the checkpoint lacks is missing, one it has that no key asks for unexpected.
  options.value_keys = {"step", "epoch"};
  try {
    load(p, ckpt, MPI_COMM_WORLD, options);
    ADD_FAILURE() << "strict load should fail";
  } catch (const LoadVerdictError& e) {
    EXPECT_EQ(e.result().missing_keys, std::vector<std::string>{"epoch"});
    EXPECT_EQ(e.result().unexpected_keys, (std::vector<std::string>{"sched.base_lrs", "data"}));
  }

  // Ranks that ask for different keys, or save different values, fail on every rank.
  options.value_keys = {"step"};
  if (world_size() > 1 && world_rank() == 1) options.value_keys.push_back("data");
  if (world_size() > 1) EXPECT_THROW(load(p, ckpt, MPI_COMM_WORLD, options), UsageError);
  ValueList mine = values;
  mine[0].second = Value::of_int(world_rank());
  if (world_size() > 1) {
    EXPECT_THROW(save(p, dir.path + "/never", MPI_COMM_WORLD, {.values = mine}), UsageError);
  }
  // A key both a tensor's and a value's, and a pickle loaded without allow_pickle.
  EXPECT_THROW(save(p, dir.path + "/never", MPI_COMM_WORLD, {.values = {{"w", Value::none()}}}),
               UsageError);
  EXPECT_FALSE(std::filesystem::exists(dir.path + "/never"));
  save(p, dir.path + "/pickled", MPI_COMM_WORLD, {.values = {{"obj", Value::of_pickle("\x80.")}}});
  LoadOptions pickled;
  pickled.value_keys = {"obj"};
  EXPECT_THROW(load(p, dir.path + "/pickled", MPI_COMM_WORLD, pickled), UsageError);
  pickled.allow_pickle = true;
  EXPECT_TRUE(load(p, dir.path + "/pickled", MPI_COMM_WORLD, pickled).values.at(0).second ==
              Value::of_pickle("\x80."));
}

TEST(Load, DeferredPrefixesAreReadWholeAndJudgedByTheCaller) {
  // The Python front end's modules with loading of their own: under "bn." the caller judges.
  SharedDir dir{"deferred"};
  const std::string ckpt = dir.path + "/ckpt";
  const at::Tensor old_w = make_tensor(1, at::kFloat, {3, 2});
  const at::Tensor mean = make_tensor(2, at::kDouble, {4});
  const at::Tensor fc = make_tensor(3, at::kFloat, {2 * world_size(), 3});
  {
    Partition p;
    p.add("bn.old_w", old_w);
    p.add("bn.mean", mean);
    p.add_split("fc.w", fc.chunk(world_size(), 0)[static_cast<size_t>(world_rank())].clone(), 0);
    save(p, ckpt, MPI_COMM_WORLD,
         {.values = {{"bn.extra", Value::of_int(7)},
                     {"bn.code", Value::of_pickle("\x80.")},
                     {"__metadata__", Value::dict({Value::of_str("bn"), Value::of_int(2)})}}});
  }
  Partition model;
  at::Tensor my_mean = at::zeros({4}, at::kDouble);
  at::Tensor my_fc = at::zeros({2, 3});
  model.add("bn.mean", my_mean);
  model.add("bn.new_w", at::zeros({3, 2}));  // declared, not in the checkpoint
  model.add_split("fc.w", my_fc, 0);
  LoadOptions options;
  options.deferred_prefixes = {"bn."};
  options.value_keys = {"bn.state"};  // asked, absent: not missing under "bn."
  // Judged, not read: the undeclared tensor is only named.
  LoadResult named = load(model, ckpt, MPI_COMM_WORLD, options);
  EXPECT_TRUE(named.deferred.empty());
  // (a pickled value, without allow_pickle, is named too: never unpickled)
  EXPECT_EQ(named.deferred_unexpected, (std::vector<std::string>{"bn.code", "bn.old_w"}));
  options.read_prefixes = {"bn."};
  LoadResult r = load(model, ckpt, MPI_COMM_WORLD, options);  // strict, and passes
  EXPECT_TRUE(r.missing_keys.empty() && r.unexpected_keys.empty()) << verdict_text(r);
  EXPECT_EQ(r.deferred_missing, std::vector<std::string>{"bn.new_w"});
  EXPECT_EQ(r.deferred_unexpected, std::vector<std::string>{"bn.code"});
  ASSERT_EQ(r.deferred.size(), 1u);
  EXPECT_EQ(r.deferred[0].key, "bn.old_w");
  EXPECT_TRUE(r.deferred[0].tensor.equal(old_w));
  EXPECT_TRUE(my_mean.equal(mean));  // declared under the prefix: read in place
  EXPECT_TRUE(my_fc.equal(fc.chunk(world_size(), 0)[static_cast<size_t>(world_rank())]));
  ASSERT_EQ(r.values.size(), 1u);  // the unasked value under "bn." comes back; the annotation not
  EXPECT_EQ(r.values[0].first, "bn.extra");
  EXPECT_EQ(model.entries().size(), 3u);  // the entries the load added are gone again

  // Without the prefix the same load's verdict is shardload's own.
  try {
    load(model, ckpt, MPI_COMM_WORLD, LoadOptions{});
    ADD_FAILURE() << "strict load should fail";
  } catch (const LoadVerdictError& e) {
    EXPECT_EQ(e.result().missing_keys, std::vector<std::string>{"bn.new_w"});
    EXPECT_EQ(e.result().unexpected_keys,
              (std::vector<std::string>{"bn.old_w", "bn.extra", "bn.code"}));
  }
  // Ranks that defer different prefixes fail on every rank.
  if (world_size() > 1) {
    LoadOptions mixed;
    if (world_rank() == 1) mixed.deferred_prefixes = {"bn."};
    EXPECT_THROW(load(model, ckpt, MPI_COMM_WORLD, mixed), UsageError);
  }
}

TEST(Load, DtypesConvertLikeCopy) {
  Fixture f;
  TensorList ref = f.zeros_like_full();
  ref[1].tensor = ref[1].tensor.to(at::kDouble);  // float32 -> float64
  ref[3].tensor = ref[3].tensor.to(at::kFloat);   // bfloat16 -> float32
  Partition p = f.model(ref);
  LoadResult r = load(p, f.ckpt, MPI_COMM_WORLD);
  ASSERT_EQ(r.dtype_conversions.size(), 2u);
  EXPECT_EQ(r.dtype_conversions[0].key, "layer.w");
  EXPECT_EQ(r.dtype_conversions[0].to, DType::kFloat64);
  EXPECT_EQ(r.dtype_conversions[1].key, "norm.w");
  EXPECT_TRUE(same_bits(p.entries()[1].tensor, f.full[1].tensor.to(at::kDouble)));
  EXPECT_TRUE(same_bits(p.entries()[3].tensor, f.full[3].tensor.to(at::kFloat)));
}

TEST(Load, PrefixMappingFilterAndHint) {
  Fixture f;
  TensorList ref;
  for (const auto& t : f.zeros_like_full()) ref.push_back({"module." + t.key, t.tensor});
  Partition p = f.model(ref);
  try {
    load(p, f.ckpt, MPI_COMM_WORLD);
    ADD_FAILURE() << "strict load should fail";
  } catch (const LoadVerdictError& e) {
    ASSERT_FALSE(e.result().hints.empty());
    EXPECT_NE(e.result().hints[0].find("\"module.\""), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("Hint:"), std::string::npos);
  }
  LoadResult r = load(p, f.ckpt, MPI_COMM_WORLD, {.model_prefix = "module."});
  EXPECT_TRUE(r.ok);
  EXPECT_TRUE(same_bits(p.entries()[0].tensor, f.full[0].tensor));

  // A key filter: only "layer." keys take part; others are neither missing nor unexpected.
  Partition q = f.model(f.zeros_like_full());
  LoadResult fr = load(q, f.ckpt, MPI_COMM_WORLD, {.key_filter = "^layer\\."});
  EXPECT_TRUE(fr.ok);
  EXPECT_TRUE(same_bits(q.entries()[1].tensor, f.full[1].tensor));
  EXPECT_TRUE(same_bits(q.entries()[0].tensor, at::zeros_like(f.full[0].tensor)));
}

TEST(Load, ModuleAndPartitionNamesAgreeWithStrictSemanticsOnEmptyModel) {
  Fixture f;
  Partition empty;
  try {
    load(empty, f.ckpt, MPI_COMM_WORLD);
    ADD_FAILURE() << "strict load of a model with no keys must fail (all unexpected)";
  } catch (const LoadVerdictError& e) {
    EXPECT_EQ(e.result().unexpected_keys.size(), f.full.size());
  }
  EXPECT_TRUE(load(empty, f.ckpt, MPI_COMM_WORLD, {.strict = false}).ok);
}

TEST(Load, LargeTensorsLandDirectlyOrThroughStaging) {
  // Messages of 1 MiB or more go status-first and, where the destination allows, straight into
  // the tensor; a transposed destination or a dtype conversion still goes through staging.
  SharedDir dir("large");
  TensorList full = {{"big", make_tensor(1, at::kFloat, {1024, 768})},
                     {"big_t", make_tensor(2, at::kFloat, {1024, 512})},
                     {"big_cast", make_tensor(3, at::kFloat, {600, 1000})},
                     {"split", make_tensor(4, at::kBFloat16, {2048, 640})}};
  save(Partition::from_global(full, {}, world_rank(), world_size()), dir.path + "/ckpt",
       MPI_COMM_WORLD);
  at::Tensor transposed_storage = at::zeros({512, 1024});
  TensorList model = {{"big", at::zeros({1024, 768})},
                      {"big_t", transposed_storage.t()},
                      {"big_cast", at::zeros({600, 1000}, at::kDouble)},
                      {"split", at::zeros({2048, 640}, at::kBFloat16)}};
  Partition p = Partition::from_global(model, {{"^split$", 0, {}}}, world_rank(), world_size());
  p.entries()[1].tensor = transposed_storage.t();  // keep the non-contiguous view itself
  LoadResult r = load(p, dir.path + "/ckpt", MPI_COMM_WORLD, {.message_bytes = 2 << 20});
  EXPECT_TRUE(r.ok);
  EXPECT_EQ(r.message_bytes, 2 << 20);
  Partition expect = Partition::from_global(full, {{"^split$", 0, {}}}, world_rank(), world_size());
  EXPECT_TRUE(same_bits(p.entries()[0].tensor, expect.entries()[0].tensor));
  EXPECT_TRUE(same_bits(p.entries()[1].tensor.contiguous(), expect.entries()[1].tensor));
  EXPECT_TRUE(same_bits(transposed_storage, full[1].tensor.t().contiguous()));
  EXPECT_TRUE(same_bits(p.entries()[2].tensor, full[2].tensor.to(at::kDouble)));
  EXPECT_TRUE(same_bits(p.entries()[3].tensor, expect.entries()[3].tensor));
  EXPECT_EQ(r.bytes_read_total, r.bytes_needed_total);
}

TEST(Transport, MessagesOver2GiBArriveWhole) {
  // One buffer of 2 GiB + 4 KiB from rank 0 to the last rank (to itself on one rank).
  Communicator comm(MPI_COMM_WORLD);
  auto transport = make_mpi_transport(comm);
  const size_t n = (size_t{1} << 31) + 4096;
  int last = comm.size() - 1;
  std::vector<int> ranks = {0};
  if (last != 0) ranks.push_back(last);
  bool involved = comm.rank() == 0 || comm.rank() == last;
  bool ok = true;
  if (involved) {
    std::vector<uint8_t> buf(n, 0);
    if (comm.rank() == 0) {
      for (size_t i = 0; i < n; i += 4093) buf[i] = static_cast<uint8_t>(i % 251 + 1);
      buf[n - 1] = 77;
    }
    transport->start(buf.data(), n, 0, ranks)->wait();
    for (size_t i = 0; i < n; i += 4093) ok = ok && buf[i] == static_cast<uint8_t>(i % 251 + 1);
    ok = ok && buf[n - 1] == 77;
  }
  EXPECT_TRUE(all_ranks(ok));
}

}  // namespace
}  // namespace shardload::testing
