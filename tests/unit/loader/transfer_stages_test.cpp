// The transfer's stages alone, without MPI or ranks: route (route.h), land (land.h), read
// (read.h) and deliver (deliver.h, against recording transports), and the message states they
// move through (message.h).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "io/checkpoint_source.h"
#include "io/safetensors/safetensors_writer.h"
#include "loader/partition.h"
#include "loader/shard_files.h"
#include "loader/tensor_bytes.h"
#include "loader/transfer/deliver.h"
#include "loader/transfer/land.h"
#include "loader/transfer/message.h"
#include "loader/transfer/read.h"
#include "loader/transfer/route.h"
#include "loader/transfer/staging_arena.h"
#include "tests/unit/temp_dir.h"

namespace shardload {
namespace {

ChunkRecord chunk(const std::string& key, Shape global, Box box, DType dtype = DType::kFloat32) {
  const uint64_t nbytes = static_cast<uint64_t>(box_numel(box) * dtype_size(dtype));
  return ChunkRecord{key, dtype, std::move(global), box.offset, box.shape, 0, "/" + key, nbytes, 0};
}
Need whole(const std::string& key, Shape global, DType dtype = DType::kFloat32) {
  Box box = full_box(global);
  return Need{key, dtype, std::move(global), std::move(box)};
}

/// One rank's side of a plan: its share, its needs and a partition of fresh tensors (filled
/// with -1) that the needs land in, in the same order.
struct RankSide {
  LoadPlan plan;
  std::vector<Need> needs;
  std::vector<int32_t> entry_of_need;
  Partition partition;
  int rank = 0;

  RankSide(const std::vector<ChunkRecord>& index, const std::vector<std::vector<Need>>& all, int r,
           int64_t message_bytes = 8 << 20)
      : rank(r) {
    const RankGroups groups = RankGroups::merge_equal(all);
    plan = plan_load_for_rank(index, groups, r, PlanOptions{message_bytes});
    needs = groups.concrete_list(r);
    for (size_t i = 0; i < needs.size(); ++i) {
      std::vector<int64_t> sizes(needs[i].region.shape.begin(), needs[i].region.shape.end());
      partition.add(needs[i].key,
                    at::full(sizes, -1, at::TensorOptions().dtype(scalar_type_of(needs[i].dtype))));
      entry_of_need.push_back(static_cast<int32_t>(i));
    }
  }
  const at::Tensor& tensor(size_t i) const { return partition.entries()[i].tensor; }
};

/// The message of `plan` that holds a piece of chunk `c`.
const Message& message_of_chunk(const LoadPlan& plan, int32_t c) {
  for (const Message& m : plan.messages) {
    for (int32_t p : m.pieces) {
      if (plan.pieces[static_cast<size_t>(p)].chunk == c) return m;
    }
  }
  throw std::runtime_error("no message holds chunk " + std::to_string(c));
}

TEST(TransferRoute, HostRoutesDeviceRouteAndGroupNumbersAgreeAcrossShares) {
  // 2 ranks: "big" (4 MiB) and "small" replicated, "mine" only on rank 1.
  std::vector<ChunkRecord> index = {chunk("big", {1 << 20}, full_box({1 << 20})),
                                    chunk("small", {10}, full_box({10})),
                                    chunk("mine", {10}, full_box({10}))};
  std::vector<std::vector<Need>> needs = {
      {whole("big", {1 << 20}), whole("small", {10})},
      {whole("big", {1 << 20}), whole("small", {10}), whole("mine", {10})}};
  RankSide r0(index, needs, 0), r1(index, needs, 1);
  EXPECT_EQ(host_route(r1.plan, message_of_chunk(r1.plan, 0)), Route::kTwoStep);
  EXPECT_EQ(host_route(r1.plan, message_of_chunk(r1.plan, 1)), Route::kOneStep);
  EXPECT_EQ(host_route(r1.plan, message_of_chunk(r1.plan, 2)), Route::kLocal);

  // The device route: a chunk any rank lands in host memory keeps its message on the host.
  HostChunks on_0(index.size()), on_1(index.size());
  on_1.mark(1);
  for (size_t b = 0; b < on_0.bits().size(); ++b) on_0.bits()[b] |= on_1.bits()[b];  // the OR
  EXPECT_TRUE(on_0.marked(1));
  EXPECT_FALSE(on_0.marked(0));
  EXPECT_TRUE(on_0.device_route(r0.plan, message_of_chunk(r0.plan, 0)));
  EXPECT_FALSE(on_0.device_route(r0.plan, message_of_chunk(r0.plan, 1)));

  // Both ranks number a shared message alike, from their own shares; messages differ.
  for (int32_t c : {0, 1}) {
    EXPECT_EQ(device_group_id(r0.plan, index, message_of_chunk(r0.plan, c)),
              device_group_id(r1.plan, index, message_of_chunk(r1.plan, c)));
  }
  EXPECT_NE(device_group_id(r1.plan, index, message_of_chunk(r1.plan, 0)),
            device_group_id(r1.plan, index, message_of_chunk(r1.plan, 1)));
  EXPECT_GE(device_group_id(r1.plan, index, message_of_chunk(r1.plan, 2)), 0);
}

TEST(TransferLand, PiecesLandAtTheirPlacesConvertingDtypeAndInPlacePiecesAreOnlyCounted) {
  // "w" stored as two float32 row blocks, needed as float64 (two pieces, a conversion); "v"
  // stored and needed as float32 (a plain copy); "big" large enough to be read in place; "u"
  // as two row blocks and "c" as two column blocks, both needed as stored (contiguous parts of
  // "u", strided parts of "c").
  const int64_t big = kInPlaceBytes / 4 + 100;
  std::vector<ChunkRecord> index = {
      chunk("w", {4, 6}, Box{{0, 0}, {2, 6}}), chunk("w", {4, 6}, Box{{2, 0}, {2, 6}}),
      chunk("v", {5}, full_box({5})),          chunk("big", {big}, full_box({big})),
      chunk("u", {4, 6}, Box{{0, 0}, {2, 6}}), chunk("u", {4, 6}, Box{{2, 0}, {2, 6}}),
      chunk("c", {4, 6}, Box{{0, 0}, {4, 3}}), chunk("c", {4, 6}, Box{{0, 3}, {4, 3}})};
  RankSide side(index,
                {{whole("w", {4, 6}, DType::kFloat64), whole("v", {5}), whole("big", {big}),
                  whole("u", {4, 6}), whole("c", {4, 6})}},
                0);
  ASSERT_EQ(side.plan.messages.size(), 1u);
  const Message& m = side.plan.messages[0];
  ASSERT_EQ(m.pieces.size(), 8u);
  Lander lander(side.plan, index, 0, side.needs, side.entry_of_need, side.partition, nullptr);

  // The message's bytes: each piece's stored values at its aligned position.
  const at::Tensor w = at::arange(24, at::kFloat).view({4, 6});
  const at::Tensor v = at::arange(5, at::kFloat) + 100;
  const at::Tensor b = at::arange(big, at::kFloat) - 7;
  const at::Tensor u = at::arange(24, at::kFloat).view({4, 6}) * 3;
  const at::Tensor c = at::arange(24, at::kFloat).view({4, 6}) - 50;
  const at::Tensor sources[] = {w, v, b, u, c};
  std::vector<char> bytes(static_cast<size_t>(m.nbytes), 0);
  int landed_pieces = 0;
  lander.for_my_pieces(m, [&](const Piece& piece, int32_t need, int64_t pos) {
    ++landed_pieces;
    const at::Tensor& src = sources[need];
    at::Tensor part = src;
    for (size_t d = 0; d < piece.box.shape.size(); ++d) {
      part = part.narrow(static_cast<int64_t>(d), piece.box.offset[d], piece.box.shape[d]);
    }
    part = part.contiguous();
    EXPECT_EQ(pos % kPieceAlign, 0);
    std::memcpy(bytes.data() + pos, part.data_ptr(), static_cast<size_t>(piece.nbytes));
  });
  EXPECT_EQ(landed_pieces, 8);

  // Only "big" qualifies for a read in place (large, contiguous, stored dtype, all of it).
  const std::vector<char*> in_place = lander.in_place_targets(m);
  ASSERT_EQ(in_place.size(), 8u);
  int targets = 0;
  for (size_t k = 0; k < 8; ++k) {
    const Piece& piece = side.plan.pieces[static_cast<size_t>(m.pieces[k])];
    if (in_place[k]) {
      ++targets;
      EXPECT_EQ(index[static_cast<size_t>(piece.chunk)].key, "big");
      EXPECT_EQ(in_place[k], side.tensor(2).data_ptr());
    }
  }
  EXPECT_EQ(targets, 1);

  EXPECT_EQ(lander.land(m, bytes.data(), in_place), 24 * 4 + 5 * 4 + big * 4 + 2 * 24 * 4);
  EXPECT_TRUE(at::equal(side.tensor(0), w.to(at::kDouble)));
  EXPECT_TRUE(at::equal(side.tensor(1), v));
  EXPECT_TRUE(at::equal(side.tensor(3), u));
  EXPECT_TRUE(at::equal(side.tensor(4), c));
  // Read in place: nothing copied into it here (it still holds its -1s).
  EXPECT_TRUE(at::equal(side.tensor(2), at::full({big}, -1, at::kFloat)));
  lander.land(m, bytes.data());
  EXPECT_TRUE(at::equal(side.tensor(2), b));

  // No multi-piece message has a direct destination; "big" alone would, in host memory only.
  EXPECT_FALSE(lander.direct_destination(m, /*device=*/false).defined());
  RankSide one(std::vector<ChunkRecord>{index[3]}, {{whole("big", {big})}}, 0);
  std::vector<ChunkRecord> big_index = {index[3]};
  Lander alone(one.plan, big_index, 0, one.needs, one.entry_of_need, one.partition, nullptr);
  const at::Tensor direct = alone.direct_destination(one.plan.messages[0], /*device=*/false);
  ASSERT_TRUE(direct.defined());
  EXPECT_EQ(direct.data_ptr(), one.tensor(0).data_ptr());
  EXPECT_FALSE(alone.direct_destination(one.plan.messages[0], /*device=*/true).defined());
  EXPECT_FALSE(alone.lands_on_device(one.plan.messages[0]));
}

TEST(TransferRead, PiecesAtAlignedPlacesPartsOfChunksAndReadsInPlace) {
  test_util::TempDir dir;
  const std::string path = dir.path() + "/model.safetensors";
  const int64_t big = kInPlaceBytes / 4 + 3;
  const at::Tensor a = at::arange(5, at::kFloat), c = at::arange(big, at::kFloat) * 2;
  const at::Tensor i64 = at::arange(3, at::kLong) + 40,
                   m2 = at::arange(12, at::kFloat).view({4, 3});
  write_safetensors_file(path, {{"a", a}, {"b", i64}, {"c", c}, {"m", m2}});
  ShardFiles files(find_checkpoint_source(path));
  const std::vector<ChunkRecord> index = files.get(0).read_index(0);
  ASSERT_EQ(index.size(), 4u);
  // Rank 0 needs a, b, c whole and rows 1..2 of m (a part of a chunk).
  std::vector<std::vector<Need>> needs = {
      {whole("a", {5}), whole("b", {3}, DType::kInt64), whole("c", {big}),
       Need{"m", DType::kFloat32, {4, 3}, Box{{1, 0}, {2, 3}}}}};
  RankSide side(index, needs, 0);
  ASSERT_EQ(side.plan.messages.size(), 1u);
  const Message& msg = side.plan.messages[0];
  MessageReader reader(side.plan, index, files, /*verify_checksums=*/true);
  reader.prepare(msg);
  std::vector<char> bytes(static_cast<size_t>(msg.nbytes), 0);
  EXPECT_EQ(reader.read(msg, bytes.data()), 5 * 4 + 3 * 8 + big * 4 + 6 * 4);
  Lander lander(side.plan, index, 0, side.needs, side.entry_of_need, side.partition, nullptr);
  lander.land(msg, bytes.data());
  EXPECT_TRUE(at::equal(side.tensor(0), a));
  EXPECT_TRUE(at::equal(side.tensor(1), i64));
  EXPECT_TRUE(at::equal(side.tensor(2), c));
  EXPECT_TRUE(at::equal(side.tensor(3), m2.narrow(0, 1, 2)));

  // In place: "c" goes straight into its tensor, the rest into the buffer.
  RankSide again(index, needs, 0);
  Lander lander2(again.plan, index, 0, again.needs, again.entry_of_need, again.partition, nullptr);
  const std::vector<char*> targets = lander2.in_place_targets(again.plan.messages[0]);
  ASSERT_FALSE(targets.empty());
  std::vector<char> staged(static_cast<size_t>(msg.nbytes), 0);
  MessageReader reader2(again.plan, index, files, true);
  reader2.read(again.plan.messages[0], staged.data(), targets);
  EXPECT_TRUE(at::equal(again.tensor(2), c));
  lander2.land(again.plan.messages[0], staged.data(), targets);
  for (size_t i = 0; i < 4; ++i) EXPECT_TRUE(at::equal(again.tensor(i), side.tensor(i))) << i;
}

// Recording transports: each start is logged; a delivery completes when the test says so, and
// then (as the real one would) writes the reader's bytes into the receiver's buffer.
struct Log {
  std::vector<std::string> calls;
  std::vector<std::pair<void*, size_t>> starts;
  bool complete = false;
  std::vector<char> arriving;  ///< what a delivery writes into its buffer when it completes
};

class RecordedDelivery : public Delivery {
 public:
  RecordedDelivery(Log& log, void* data, size_t n) : log_(log), data_(data), n_(n) {}
  bool test() override {
    if (!log_.complete) return false;
    if (!done_ && !log_.arriving.empty()) {
      std::memcpy(data_, log_.arriving.data(), std::min(n_, log_.arriving.size()));
    }
    done_ = true;
    return true;
  }
  void wait() override { test(); }

 private:
  Log& log_;
  void* data_;
  size_t n_;
  bool done_ = false;
};

class RecordingTransport : public Transport {
 public:
  explicit RecordingTransport(Log& log) : log_(log) {}
  std::string name() const override { return "recording"; }
  bool supports(MemoryKind kind) const override { return kind == MemoryKind::kHost; }
  std::unique_ptr<Delivery> start(void* data, size_t nbytes, int root,
                                  std::span<const int> ranks) override {
    log_.calls.push_back("start " + std::to_string(nbytes) + " from " + std::to_string(root) +
                         " to " + std::to_string(ranks.size()));
    log_.starts.emplace_back(data, nbytes);
    return std::make_unique<RecordedDelivery>(log_, data, nbytes);
  }
  void announce_failure(const std::string&) override {}
  std::string announced_failure() override { return ""; }

 private:
  Log& log_;
};

class RecordingDevice : public DeviceTransport {
 public:
  explicit RecordingDevice(Log& log) : log_(log) {}
  std::string name() const override { return "recording"; }
  char* begin(int64_t) override { return nullptr; }
  void retire(char*, int64_t nbytes) override {
    log_.calls.push_back("retire " + std::to_string(nbytes));
  }
  void upload(void*, const void*, int64_t nbytes) override {
    log_.calls.push_back("upload " + std::to_string(nbytes));
  }
  void group_begin(int64_t) override { log_.calls.push_back("group_begin"); }
  void start(void*, int64_t nbytes, int root, std::span<const int>) override {
    log_.calls.push_back("start " + std::to_string(nbytes) + " from " + std::to_string(root));
  }
  std::unique_ptr<Delivery> group_end() override {
    log_.calls.push_back("group_end");
    return std::make_unique<RecordedDelivery>(log_, nullptr, 0);
  }
  void land(const at::Tensor&, const void*, at::ScalarType, const Shape&) override {
    log_.calls.push_back("land");
  }
  std::unique_ptr<Delivery> mark() override {
    log_.calls.push_back("mark");
    return std::make_unique<RecordedDelivery>(log_, nullptr, 0);
  }
  void finish() override {}
  void abort() override {}

 private:
  Log& log_;
};

/// `t` made the task of message `m` of `side`, with `buffer` its host buffer.
void init_task(MessageTask& t, const RankSide& side, const Message& m, Route route,
               std::vector<char>& buffer) {
  t.message = &m;
  t.route = route;
  t.reader = m.reader == side.rank;
  buffer.assign(static_cast<size_t>(kStatusBytes + m.nbytes), 0);
  t.base = buffer.data();
  t.set_status(true);
}

TEST(TransferDeliver, EachRouteMovesItsMessageThroughItsStates) {
  // Two ranks need "big" (one 4 MiB piece: two steps) and "s1", "s2" (small: one step).
  std::vector<ChunkRecord> index = {chunk("big", {1 << 20}, full_box({1 << 20})),
                                    chunk("s1", {10}, full_box({10})),
                                    chunk("s2", {6}, full_box({6}))};
  std::vector<Need> all = {whole("big", {1 << 20}), whole("s1", {10}), whole("s2", {6})};
  for (int rank : {0, 1}) {
    SCOPED_TRACE("rank " + std::to_string(rank));
    RankSide side(index, {all, all}, rank);
    Lander lander(side.plan, index, rank, side.needs, side.entry_of_need, side.partition, nullptr);
    Log status_log, data_log;
    Deliverer deliver(side.plan, std::make_unique<RecordingTransport>(status_log),
                      std::make_unique<RecordingTransport>(data_log));

    // Two steps: the status word, then the bytes (straight into a receiver's tensor).
    const Message& big = message_of_chunk(side.plan, 0);
    std::vector<char> buffer;
    MessageTask t;
    init_task(t, side, big, host_route(side.plan, big), buffer);
    ASSERT_EQ(t.route, Route::kTwoStep);
    t.direct = direct_receive(lander, big, t.route, t.reader);
    EXPECT_TRUE(deliver.announces(t));
    if (t.reader) t.state = MessageState::kRead;
    deliver.announce(t);
    EXPECT_EQ(t.state, MessageState::kAnnouncing);
    ASSERT_EQ(status_log.starts.size(), 1u);
    EXPECT_EQ(status_log.starts[0],
              std::make_pair(static_cast<void*>(t.base), size_t{kStatusWordBytes}));
    EXPECT_FALSE(deliver.poll_announce(t));
    EXPECT_EQ(t.state, MessageState::kAnnouncing);
    status_log.complete = true;
    EXPECT_TRUE(deliver.poll_announce(t));
    EXPECT_EQ(t.state, MessageState::kAnnounced);
    deliver.send(t);
    EXPECT_EQ(t.state, MessageState::kDelivering);
    ASSERT_EQ(data_log.starts.size(), 1u);
    EXPECT_EQ(data_log.starts[0].second, static_cast<size_t>(big.nbytes));
    if (t.reader) {
      EXPECT_EQ(data_log.starts[0].first, t.staged());
      EXPECT_EQ(t.direct, nullptr);
    } else {
      EXPECT_EQ(data_log.starts[0].first, side.tensor(0).data_ptr());
      EXPECT_EQ(t.direct, side.tensor(0).data_ptr());
    }
    EXPECT_FALSE(deliver.arrived(t));
    data_log.complete = true;
    EXPECT_TRUE(deliver.arrived(t));

    // A failed read's status word skips the message: no bytes move.
    std::vector<char> failed_buffer;
    MessageTask f;
    init_task(f, side, big, Route::kTwoStep, failed_buffer);
    if (f.reader) {
      f.set_status(false);
      f.state = MessageState::kRead;
    }
    status_log.arriving.assign(16, 0);
    status_log.arriving[0] = 1;  // the reader's word: failed
    deliver.announce(f);
    EXPECT_TRUE(deliver.poll_announce(f));
    EXPECT_EQ(f.state, MessageState::kSkipped);
    EXPECT_EQ(data_log.starts.size(), 1u);

    // One step: the status word travels with the bytes, into staging.
    const Message& small = message_of_chunk(side.plan, 1);
    std::vector<char> small_buffer;
    MessageTask s;
    init_task(s, side, small, host_route(side.plan, small), small_buffer);
    ASSERT_EQ(s.route, Route::kOneStep);
    EXPECT_EQ(direct_receive(lander, small, s.route, s.reader), nullptr);
    EXPECT_FALSE(deliver.announces(s));
    deliver.send(s);
    EXPECT_EQ(s.state, MessageState::kDelivering);
    ASSERT_EQ(data_log.starts.size(), 2u);
    EXPECT_EQ(data_log.starts[1], std::make_pair(static_cast<void*>(s.base),
                                                 static_cast<size_t>(kStatusBytes + small.nbytes)));
    EXPECT_TRUE(deliver.arrived(s));
  }
}

TEST(TransferDeliver, DeviceMessagesUploadThenGroupThenLandAndWaitForTheRing) {
  std::vector<ChunkRecord> index = {chunk("a", {1000}, full_box({1000})),
                                    chunk("b", {1000}, full_box({1000}))};
  std::vector<Need> all = {whole("a", {1000}), whole("b", {1000})};
  // Messages of at most 4000 bytes: "a" and "b" go apart.
  RankSide side(index, {all, all}, 0, /*message_bytes=*/4000);
  ASSERT_EQ(side.plan.messages.size(), 2u);
  Lander lander(side.plan, index, 0, side.needs, side.entry_of_need, side.partition, nullptr);
  Log status_log, device_log;
  Deliverer deliver(side.plan, std::make_unique<RecordingTransport>(status_log), nullptr);
  std::vector<char> ring(4096 + 16);
  // Room for one message: the second waits until the first is released.
  deliver.attach_device(std::make_shared<RecordingDevice>(device_log), ring.data(), 4096 + 16);
  MessageTask tasks[2];
  std::vector<std::vector<char>> buffers(2);
  for (size_t i = 0; i < 2; ++i) {
    init_task(tasks[i], side, side.plan.messages[i], Route::kDevice, buffers[i]);
    tasks[i].group = device_group_id(side.plan, index, side.plan.messages[i]);
    tasks[i].state = MessageState::kAnnounced;
  }
  int64_t landed = 0;
  ASSERT_TRUE(deliver.issue_device(tasks[0], lander, landed));
  EXPECT_EQ(landed, 4000);
  EXPECT_EQ(tasks[0].state, MessageState::kDelivering);
  EXPECT_EQ(tasks[0].device, ring.data());
  std::vector<std::string> expected;
  if (tasks[0].reader) expected.push_back("upload 4000");
  expected.insert(expected.end(),
                  {"group_begin", "start 4000 from " + std::to_string(tasks[0].message->reader),
                   "group_end", "land", "mark"});
  EXPECT_EQ(device_log.calls, expected);
  // The ring is full: nothing happens to the second message.
  device_log.calls.clear();
  EXPECT_FALSE(deliver.issue_device(tasks[1], lander, landed));
  EXPECT_EQ(tasks[1].state, MessageState::kAnnounced);
  EXPECT_TRUE(device_log.calls.empty());
  EXPECT_FALSE(deliver.arrived(tasks[0]));
  device_log.complete = true;
  EXPECT_TRUE(deliver.arrived(tasks[0]));
  tasks[0].state = MessageState::kLanded;
  deliver.release(tasks[0]);
  // Its ring slot: 4000 bytes rounded up to a cache line.
  EXPECT_EQ(device_log.calls, std::vector<std::string>{"retire 4032"});
  EXPECT_TRUE(deliver.issue_device(tasks[1], lander, landed));
  EXPECT_EQ(landed, 8000);
  EXPECT_TRUE(is_final(MessageState::kSkipped));
  EXPECT_FALSE(is_final(MessageState::kDelivering));
  EXPECT_STREQ(state_name(MessageState::kAnnounced), "announced");
}

TEST(TransferLand, CopyPastCacheCopiesEveryByteAtAnyPlaceAndTouchesNothingElse) {
  // Sizes on both sides of the streaming threshold and of a cache line; destinations and
  // sources at every kind of place in a cache line (the streamed body starts at the
  // destination's next line: head, body and tail all checked).
  const size_t sizes[] = {0,
                          1,
                          63,
                          kPastCacheBytes - 1,
                          kPastCacheBytes,
                          kPastCacheBytes + 1,
                          kPastCacheBytes + 63,
                          (size_t{1} << 20) + 17};
  const size_t largest = (size_t{1} << 20) + 17, guard = 128;
  std::vector<char> src(largest + guard), dst(largest + 2 * guard);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<char>(i * 131 + i / 251);
  for (size_t n : sizes) {
    for (size_t d_at : {size_t{0}, size_t{1}, size_t{15}, size_t{33}, size_t{63}}) {
      for (size_t s_at : {size_t{0}, size_t{5}, size_t{48}}) {
        SCOPED_TRACE("n " + std::to_string(n) + " dst +" + std::to_string(d_at) + " src +" +
                     std::to_string(s_at));
        std::fill(dst.begin(), dst.end(), '\x5a');
        char* d = dst.data() + guard + d_at;
        copy_past_cache(d, src.data() + s_at, n);
        ASSERT_EQ(std::memcmp(d, src.data() + s_at, n), 0);
        for (const char* p = dst.data(); p < d; ++p) ASSERT_EQ(*p, '\x5a');
        for (const char* p = d + n; p < dst.data() + dst.size(); ++p) ASSERT_EQ(*p, '\x5a');
      }
    }
  }
}

TEST(TransferStaging, RingsReleaseInOrderAndACompactRingGoesBackToTheStartWhenItIsFree) {
  // A plain ring places each range after the newest and wraps only at its end.
  static_assert(kRingAlign == 64);
  OffsetRing plain(400);
  EXPECT_EQ(plain.allocate(120), 0);
  EXPECT_EQ(plain.allocate(120), 128);  // sizes round up to a cache line
  EXPECT_EQ(plain.release(0), 128);
  EXPECT_EQ(plain.allocate(120), 256);
  EXPECT_EQ(plain.allocate(64), 0);         // [384, 448) would pass the end: wraps
  EXPECT_THROW(plain.release(256), Error);  // not the oldest
  EXPECT_EQ(plain.release(128), 128);
  EXPECT_EQ(plain.allocate(160), 64);          // after the newest
  EXPECT_EQ(plain.allocate(1), std::nullopt);  // [256, 320) would overlap the live [256, 384)
  EXPECT_EQ(plain.peak(), 384);

  // A compact ring goes back to 0 as soon as a range fits before the oldest live one, so a
  // stream of short-lived buffers keeps reusing the same bytes; a plain one moves on.
  OffsetRing compact(4000, /*compact=*/true), moves_on(4000);
  for (OffsetRing* ring : {&compact, &moves_on}) {
    EXPECT_EQ(ring->allocate(400), 0);
    EXPECT_EQ(ring->allocate(400), 448);
    EXPECT_EQ(ring->release(0), 448);
  }
  EXPECT_EQ(moves_on.allocate(400), 896);
  EXPECT_EQ(compact.allocate(400), 0);             // [0, 448) is free again: reused
  EXPECT_EQ(compact.allocate(400), std::nullopt);  // wrapped: up to the oldest live range only
  EXPECT_EQ(compact.release(448), 448);
  EXPECT_EQ(compact.allocate(400), 448);  // nothing before [0, 448): after it
  EXPECT_EQ(compact.release(0), 448);
  EXPECT_EQ(compact.allocate(400), 0);  // back to the start again
  EXPECT_EQ(compact.peak(), 896);
  EXPECT_EQ(compact.used(), 896);
}

}  // namespace
}  // namespace shardload
