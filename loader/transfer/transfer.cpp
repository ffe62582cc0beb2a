// The transfer's driver: one thread that moves every message of this rank through the stages —
// read (read.h, on reader threads), route (route.h, decided once in connect()), deliver
// (deliver.h) and land (land.h) — in plan order, within the staging budget. Each message carries
// its state (message.h); the driver's loop below is one pass per stage, then a wait.
#include "loader/transfer/transfer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "loader/collective.h"
#include "loader/transfer/deliver.h"
#include "loader/transfer/land.h"
#include "loader/transfer/message.h"
#include "loader/transfer/read.h"
#include "loader/transfer/read_stage.h"
#include "loader/transfer/route.h"
#include "loader/transfer/staging_arena.h"
#include "transport/device_transport.h"
#include "transport/transport.h"
#include "transport/transport_choice.h"

namespace shardload {
namespace {

/// Messages in flight on one rank at most (besides the staging budget).
constexpr size_t kMaxInFlight = 64;
/// Device ring slots reserved beyond the ring's bytes (alignment of the messages in it).
constexpr int64_t kRingSlack = 16 * kRingAlign;
/// Seconds between progress reports.
constexpr double kProgressEvery = 0.2;

/// Reader threads per rank: TransferOptions::reader_threads, or (0) the cores of this node
/// shared by the ranks on it, at least one, at most eight.
int reader_threads(const TransferOptions& options, const Communicator& comm) {
  if (options.reader_threads > 0) return options.reader_threads;
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::clamp(cores / std::max(comm.local_size(), 1), 1, 8);
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

struct Transfer::Impl {
  explicit Impl(const TransferInputs& in)
      : in(in),
        rank(in.comm.rank()),
        backend(device_backend()),
        lander(in.plan, in.index, rank, in.my_needs, in.my_entry_of_need, in.partition, backend),
        reader(in.plan, in.index, in.files, in.options.verify_checksums) {}

  TransferInputs in;
  const int rank;
  DeviceBackend* backend;  ///< the backend of device destinations (null: none in this build)
  Lander lander;
  MessageReader reader;
  std::unique_ptr<Deliverer> deliver;
  std::vector<const Message*> mine;  ///< the plan's messages this rank takes part in
  std::vector<Route> route;          ///< per message of mine
  std::vector<int64_t> group_of;     ///< per message of mine: its device group, or -1
  std::string transport_name = "mpi";
  std::string transport_note;  ///< why device destinations took another path
  std::unique_ptr<StagingArena> arena;
  std::unique_ptr<ReadStage> readers;
  int64_t bytes_to_land = 0;
  bool wants_device = false;  ///< some destination of this rank is in the backend's memory
  int device_index = -1;      ///< the device of those destinations
  bool mixed_devices = false;
  std::vector<bool> mine_on_device;  ///< per message of mine: all my pieces land on the device
  bool abandoned = false;            ///< deliveries may still write into the arena: never free it

  // The run: this rank's messages in flight, [released, taken) of `mine`, and the plan-order
  // cursors of the stages that must issue in the same order on every rank.
  std::vector<std::unique_ptr<MessageTask>> tasks;
  size_t taken = 0;       ///< messages given a buffer (and their read, on the reader)
  size_t announced = 0;   ///< messages past the status cursor
  size_t sent = 0;        ///< messages past the host-bytes cursor
  size_t issued = 0;      ///< messages past the device cursor
  size_t released = 0;    ///< messages whose buffers went back
  int reads_pending = 0;  ///< reads queued or running on the reader threads
  int threads = 1;        ///< reader threads
  TransferOutcome out;

  void connect(PhaseRunner& phases);
  void fail(ErrorKind kind, const std::string& error) {
    if (out.failed != ErrorKind::kNone) return;
    out.failed = kind;
    out.error = error;
  }
  /// Lands `bytes` of `t` here, on any thread (a reader thread right after its read); a copy
  /// that fails (it cannot, short of a bug or a full device) is reported, not thrown.
  Landing try_land(const MessageTask& t, const char* bytes,
                   const std::vector<char*>& in_place = {}) const;
  /// Counts a landing on the driver; a failed one is this rank's failure, and the others go on
  /// to the end of the plan.
  void record(const Landing& landing) {
    out.bytes_landed += landing.bytes;
    if (landing.kind != ErrorKind::kNone) fail(landing.kind, landing.error);
  }
  void land(const MessageTask& t, const char* bytes, const std::vector<char*>& in_place = {}) {
    record(try_land(t, bytes, in_place));
  }

  // The stages, in the order one pass of the loop runs them; each returns whether it moved
  // some message.
  bool take_buffers();   ///< read: buffers in plan order, reads queued to the reader threads
  bool finish_reads();   ///< read: a finished read writes the status word; the reader lands
  bool announce();       ///< deliver: status words, in plan order
  bool send();           ///< deliver: host bytes, in plan order
  bool issue_device();   ///< deliver: device groups, in plan order
  bool land_arrivals();  ///< land: delivered bytes into this rank's tensors
  bool release();        ///< buffers of final messages go back, oldest first
  /// Nothing moved: throws on a peer's announced failure or past the deadline, reports a stall,
  /// then waits a little.
  void wait(Poller& idle, uint64_t& reads_seen);

  TransferOutcome run();
  /// After a failure: ends the device's work in flight and keeps the staging memory that
  /// deliveries may still write; the reader threads stop.
  void abandon() {
    if (deliver) deliver->abort();
    abandoned = true;
    readers->stop();
  }
  /// Bytes of device messages in flight at most: a quarter of the staging budget, so that their
  /// reads fit beside older messages. The same on every rank.
  int64_t device_window() const { return std::max<int64_t>(in.options.staging_bytes / 4, 1); }
};

Transfer::Transfer(const TransferInputs& in) : impl_(std::make_unique<Impl>(in)) {
  Impl& s = *impl_;
  const LoadPlan& plan = in.plan;
  for (const Message& m : plan.messages) {
    auto ranks = plan.ranks_of(m);
    if (!std::binary_search(ranks.begin(), ranks.end(), s.rank)) continue;
    s.mine.push_back(&m);
    s.lander.for_my_pieces(
        m, [&](const Piece& piece, int32_t, int64_t) { s.bytes_to_land += piece.nbytes; });
    // Open every file this rank reads and check every chunk it reads now, on this thread: the
    // reader threads then only pread and hash.
    if (m.reader == s.rank) s.reader.prepare(m);
  }
  // Where this rank's tensors live: host, or one device (several: no device route here).
  for (const PartitionEntry& e : in.partition.entries()) {
    if (!s.lander.on_device(e.tensor)) continue;
    const int d = s.backend->device_of(e.tensor);
    if (s.wants_device && d != s.device_index) s.mixed_devices = true;
    s.wants_device = true;
    s.device_index = d;
  }
  for (const Message* m : s.mine) {
    s.mine_on_device.push_back(s.wants_device && s.lander.lands_on_device(*m));
  }
  // Host staging: what this rank holds of each message. A receiver of a device message that
  // does not read it holds only its status word.
  int64_t largest = 0, total = 0;
  for (size_t i = 0; i < s.mine.size(); ++i) {
    const Message& m = *s.mine[i];
    const int64_t size = kStatusBytes + (m.reader == s.rank || !s.mine_on_device[i] ? m.nbytes : 0);
    // Whichever route the ranks choose, the largest message fits.
    largest = std::max(largest, kStatusBytes + m.nbytes);
    total += size + kRingAlign;
  }
  // Page-locked staging when bytes go on to a device: the uploads run at full speed.
  const bool pinned = s.wants_device && s.backend == cuda_backend();
  s.arena = std::make_unique<StagingArena>(
      std::max(largest + kRingAlign, std::min(total, in.options.staging_bytes)), pinned);
  // Prepared reads are pread and hashing only: several reader threads overlap them with each
  // other and with the driver thread's deliveries and landings.
  s.threads = reader_threads(in.options, in.comm);
  s.readers = std::make_unique<ReadStage>(s.threads);
}

Transfer::~Transfer() {
  if (!impl_) return;
  impl_->readers.reset();  // joins the reader threads before their buffers go
  if (impl_->abandoned) {
    // A peer never came: deliveries still point into the arena, so it must outlive them.
    static std::vector<std::unique_ptr<StagingArena>> kept;
    kept.push_back(std::move(impl_->arena));
  }
}

void Transfer::connect(PhaseRunner& phases) { impl_->connect(phases); }

void Transfer::Impl::connect(PhaseRunner& phases) {
  const Communicator& comm = in.comm;
  route.clear();
  for (const Message* m : mine) route.push_back(host_route(in.plan, *m));
  group_of.assign(mine.size(), -1);
  deliver = comm.size() > 1 ? std::make_unique<Deliverer>(in.plan, make_mpi_transport(comm),
                                                          make_mpi_transport(comm))
                            : std::make_unique<Deliverer>(in.plan, nullptr, nullptr);
  // Device destinations anywhere? Nothing device-related (no runtime started) when none.
  const bool any_device =
      comm.size() == 1 ? wants_device : comm.allreduce_max(int64_t{wants_device}) != 0;
  if (!any_device) return;
  if (!backend) {
    transport_note = "this build has no device transport (built without NCCL)";
    return;
  }
  RankDevice report;
  phases.run("transfer",
             [&] { report = backend->report(device_index, wants_device, mixed_devices, comm); });
  std::vector<RankDevice> reports;
  if (comm.size() == 1) {
    reports.push_back(report);
  } else {
    for (const std::string& bytes : comm.allgather(serialize_rank_device(report))) {
      reports.push_back(deserialize_rank_device(bytes));
    }
  }
  const TransportChoice choice = choose_transport(reports);
  if (!choice.nccl) {
    transport_note = choice.reason;
    return;
  }
  std::shared_ptr<DeviceTransport> device;
  phases.run("transfer", [&] { device = backend->open(comm, report.device); });
  ErrorKind kind = ErrorKind::kNone;
  std::string error;
  try {
    backend->join(*device, comm);
  } catch (const std::exception& e) {
    kind = current_error_kind();
    error = e.what();
  }
  phases.reduce("transfer", kind, error);

  // A message goes the device route when every rank lands each of its chunks in device memory:
  // each rank marks the chunks it lands in host memory, and one OR over the chunks of the index
  // (which every rank holds) tells every rank the same, without anyone knowing the others'
  // messages.
  HostChunks host_chunks(in.index.size());
  for (const Message* m : mine) {
    lander.for_my_pieces(*m, [&](const Piece& piece, int32_t need, int64_t) {
      if (!lander.on_device(lander.destination(piece, need))) host_chunks.mark(piece.chunk);
    });
  }
  if (comm.size() > 1) comm.allreduce_or(host_chunks.bits());
  int64_t ring_bytes = 0, largest = 0;
  for (size_t i = 0; i < mine.size(); ++i) {
    if (!host_chunks.device_route(in.plan, *mine[i])) continue;
    route[i] = Route::kDevice;
    group_of[i] = device_group_id(in.plan, in.index, *mine[i]);
    ring_bytes += aligned_piece_start(mine[i]->nbytes) + kRingAlign;
    largest = std::max(largest, mine[i]->nbytes);
  }
  // The ring of device buffers, set up once: two windows' worth at most (no per-message device
  // allocation), no more than this rank's device messages need.
  const int64_t capacity = std::max(std::min(ring_bytes, 2 * device_window() + kRingSlack),
                                    aligned_piece_start(largest) + kRingAlign);
  char* ring = nullptr;
  phases.run("transfer", [&] { ring = device->begin(capacity); });
  deliver->attach_device(device, ring, capacity);
  transport_name = device->name();
}

Landing Transfer::Impl::try_land(const MessageTask& t, const char* bytes,
                                 const std::vector<char*>& in_place) const {
  at::NoGradGuard no_grad;  // grad mode is per thread
  Landing landing;
  try {
    landing.bytes = lander.land(*t.message, bytes, in_place);
  } catch (const std::exception& e) {
    landing.kind = current_error_kind();
    landing.error = "landing message " + std::to_string(t.number) + ": " + e.what();
  }
  return landing;
}

bool Transfer::Impl::take_buffers() {
  bool moved = false;
  while (taken < mine.size() && taken - released < kMaxInFlight) {
    const Message& m = *mine[taken];
    const bool is_reader = m.reader == rank;
    // Reads queued ahead of the reader threads only hold staging: one each in hand is enough
    // to keep them busy, and staging taken later is staging still in the cache.
    if (is_reader && reads_pending >= 2 * threads) break;
    const Route r = route[taken];
    // Read in place (an option): the reader's bytes go straight into its own tensor, and a
    // two-step delivery sends them from there; only the status word is staged.
    char* in_place = nullptr;
    if (is_reader && in.options.read_in_place && (r == Route::kLocal || r == Route::kTwoStep)) {
      if (at::Tensor dst = lander.direct_destination(m, /*device=*/false); dst.defined()) {
        in_place = static_cast<char*>(dst.data_ptr());
      }
    }
    // A receiver whose tensor takes the bytes as stored stages only the status word: staging
    // it would never use must not hold back the reads behind it.
    char* direct = direct_receive(lander, m, r, is_reader);
    const bool staged = !in_place && !direct && (is_reader || r != Route::kDevice);
    auto offset = arena->allocate(kStatusBytes + (staged ? m.nbytes : 0));
    if (!offset) break;
    auto t = std::make_unique<MessageTask>();
    t->message = &m;
    t->number = static_cast<size_t>(&m - in.plan.messages.data());
    t->route = r;
    t->group = group_of[taken];
    t->reader = is_reader;
    t->offset = *offset;
    t->base = arena->data() + *offset;
    t->set_status(true);
    t->in_place = in_place;
    t->direct = direct;
    if (is_reader && in.options.read_in_place && r == Route::kLocal && !in_place) {
      t->pieces_in_place = lander.in_place_targets(m);
    }
    if (is_reader) {
      MessageTask* raw = t.get();
      char* into = in_place ? in_place : raw->staged();
      // Host destinations only: the reader thread copies into them (device ones are the
      // driver's, which owns the device's stream).
      raw->land_on_read = !in_place && r != Route::kDevice && !wants_device;
      raw->read.work = [this, raw, into] {
        maybe_inject_failure("read", rank);
        const int64_t n = reader.read(*raw->message, into, raw->pieces_in_place);
        if (raw->land_on_read) {
          raw->read_landing = try_land(*raw, raw->staged(), raw->pieces_in_place);
        }
        return n;
      };
      readers->submit(&raw->read);
      ++reads_pending;
    }
    tasks[taken++] = std::move(t);
    moved = true;
  }
  return moved;
}

bool Transfer::Impl::finish_reads() {
  bool moved = false;
  for (size_t i = released; i < taken; ++i) {
    MessageTask& t = *tasks[i];
    if (!t.reader || t.state != MessageState::kWaiting) continue;
    const int state = t.read.state.load(std::memory_order_acquire);
    if (state == 0) continue;
    moved = true;
    --reads_pending;
    const bool good = state == 1;
    t.set_status(good);
    if (good) {
      out.bytes_read += t.read.bytes;
      if (t.in_place) {
        out.bytes_landed += t.message->nbytes;  // verified where it lies
      } else if (t.land_on_read) {
        record(t.read_landing);
      } else if (t.route != Route::kDevice) {
        land(t, t.staged(), t.pieces_in_place);
      }
    } else {
      fail(t.read.kind, t.read.error);
    }
    // Alone on a message, the reader is done with it (a device message goes on to its group).
    const bool alone = in.plan.ranks_of(*t.message).size() == 1;
    if (t.route == Route::kLocal) {
      t.state = good ? MessageState::kLanded : MessageState::kSkipped;
    } else if (t.route == Route::kDevice && alone) {
      t.state = good ? MessageState::kAnnounced : MessageState::kSkipped;
    } else {
      t.state = MessageState::kRead;
    }
  }
  return moved;
}

bool Transfer::Impl::announce() {
  bool moved = false;
  while (announced < taken) {
    MessageTask& t = *tasks[announced];
    if (deliver->announces(t)) {
      if (t.reader && t.state == MessageState::kWaiting) break;  // its read is not done
      deliver->announce(t);
    }
    ++announced;
    moved = true;
  }
  for (size_t i = released; i < announced; ++i) {
    MessageTask& t = *tasks[i];
    if (t.state == MessageState::kAnnouncing && deliver->poll_announce(t)) moved = true;
  }
  return moved;
}

bool Transfer::Impl::send() {
  bool moved = false;
  while (sent < announced) {
    MessageTask& t = *tasks[sent];
    if (t.route == Route::kOneStep) {
      if (t.reader && t.state == MessageState::kWaiting) break;
      deliver->send(t);
    } else if (t.route == Route::kTwoStep) {
      if (t.state == MessageState::kAnnounced) {
        deliver->send(t);
      } else if (t.state != MessageState::kSkipped) {
        break;  // its status word is not here yet
      }
    } else if (t.route == Route::kLocal) {
      if (!is_final(t.state)) break;  // its read is not done
    }
    // Device messages go by issue_device().
    ++sent;
    moved = true;
  }
  return moved;
}

bool Transfer::Impl::issue_device() {
  bool moved = false;
  while (issued < taken) {
    MessageTask& t = *tasks[issued];
    if (t.route == Route::kDevice) {
      if (t.state == MessageState::kAnnounced) {
        int64_t landed = 0;
        if (!deliver->issue_device(t, lander, landed)) break;
        out.bytes_landed += landed;
        ++out.device_messages;
      } else if (t.state != MessageState::kSkipped) {
        break;  // its status word is not here yet
      }
    }
    ++issued;
    moved = true;
  }
  return moved;
}

bool Transfer::Impl::land_arrivals() {
  bool moved = false;
  for (size_t i = released; i < taken; ++i) {
    MessageTask& t = *tasks[i];
    if (t.state != MessageState::kDelivering || !deliver->arrived(t)) continue;
    moved = true;
    t.data.reset();
    MessageState next = MessageState::kLanded;
    if (t.route == Route::kOneStep) {
      // The status word came with the bytes; the reader landed its own copy after its read.
      if (!t.status_good()) {
        next = MessageState::kSkipped;
      } else if (!t.reader) {
        land(t, t.staged());
      }
    } else if (t.route == Route::kTwoStep && !t.reader) {
      if (t.direct) {
        out.bytes_landed += t.message->nbytes;
      } else {
        land(t, t.staged());
      }
    }
    t.state = next;
  }
  return moved;
}

bool Transfer::Impl::release() {
  bool moved = false;
  while (released < sent && released < issued && is_final(tasks[released]->state)) {
    MessageTask& t = *tasks[released];
    deliver->release(t);
    arena->release(t.offset);
    tasks[released].reset();
    ++released;
    moved = true;
  }
  return moved;
}

void Transfer::Impl::wait(Poller& idle, uint64_t& reads_seen) {
  // A failure a peer announced ends this rank's transfer too, at once.
  if (std::string failure = deliver->announced_failure(); !failure.empty()) {
    throw CommError("the transfer failed on " + failure);
  }
  // MPI's non-blocking operations advance only inside MPI calls, so while a delivery is in
  // flight keep testing (yielding the core between tests); when only reads are awaited, sleep
  // until a reader thread finishes one.
  bool delivering = false;
  for (size_t i = released; i < taken && !delivering; ++i) {
    const MessageState s = tasks[i]->state;
    delivering = s == MessageState::kDelivering || s == MessageState::kAnnouncing;
  }
  const double timeout = in.comm.timeout();
  const double stall = in.comm.stall_seconds();
  const double waited = idle.elapsed();
  if (released < taken && ((timeout > 0 && waited > timeout) || (stall > 0 && waited > stall))) {
    // The oldest unfinished message names whom this rank is waiting for.
    const MessageTask& t = *tasks[released];
    std::vector<int> peers;
    if (!t.reader) {
      peers.push_back(t.message->reader);
    } else if (t.state != MessageState::kWaiting) {
      for (int r : in.plan.ranks_of(*t.message)) {
        if (r != rank) peers.push_back(r);
      }
    }
    if (peers.empty()) peers.push_back(rank);  // its own read is stuck (a hung filesystem)
    const std::string what = "message " + std::to_string(t.number) + " of the plan, " +
                             std::to_string(t.message->nbytes) + " bytes, read by rank " +
                             std::to_string(t.message->reader) + " (" + state_name(t.state) +
                             " here)";
    if (timeout > 0 && waited > timeout) in.comm.throw_stalled(peers, what);
    // Before the deadline: a stall line naming the peers (once per message waited on).
    in.comm.report_stalled(waited, static_cast<int64_t>(t.number), peers, what);
  }
  if (delivering) {
    sched_yield();
  } else {
    reads_seen = readers->wait_finished(reads_seen, std::chrono::microseconds(500));
  }
}

TransferOutcome Transfer::run() { return impl_->run(); }

TransferOutcome Transfer::Impl::run() {
  at::NoGradGuard no_grad;
  out = TransferOutcome{};
  tasks.clear();
  tasks.resize(mine.size());
  taken = announced = sent = issued = released = 0;
  reads_pending = 0;
  Poller idle;  // measures how long nothing moved (the stall deadline)
  uint64_t reads_seen = 0;
  auto last_report = std::chrono::steady_clock::now();
  const auto start = last_report;
  try {
    while (released < mine.size()) {
      bool moved = take_buffers();
      moved |= finish_reads();
      moved |= announce();
      moved |= send();
      moved |= issue_device();
      moved |= land_arrivals();
      moved |= release();
      if (in.options.progress && seconds_since(last_report) >= kProgressEvery) {
        last_report = std::chrono::steady_clock::now();
        in.options.progress(
            Progress{"load", "transfer", out.bytes_landed, bytes_to_land, seconds_since(start)});
      }
      if (moved) {
        idle.reset();
      } else {
        wait(idle, reads_seen);
      }
    }
    deliver->finish();
  } catch (const TimeoutError&) {
    abandon();
    throw;
  } catch (const std::exception& e) {
    // A failure here (a device error; not a peer's announcement, which names its rank already)
    // is told to every peer, so that all ranks stop now with the same message.
    const std::string text = e.what();
    abandon();
    if (text.rfind("the transfer failed on rank ", 0) == 0) throw;
    const std::string message = "the transfer failed on rank " + std::to_string(rank) + ": " + text;
    deliver->announce_failure(text);
    throw CommError(message);
  }
  readers->stop();
  out.transport = deliver->device() ? transport_name : "mpi";
  out.transport_note = transport_note;
  out.staging_peak = arena->peak();
  return out;
}

}  // namespace shardload
