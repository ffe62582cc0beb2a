#include "loader/transfer.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <thread>

#include "loader/collective.h"
#include "loader/read_stage.h"
#include "loader/staging_arena.h"
#include "loader/tensor_bytes.h"
#include "transport/device_transport.h"
#include "transport/transport.h"
#include "transport/transport_choice.h"

namespace shardload {
namespace {

/// Every message buffer starts with the reader's status word (0: the bytes are good), padded so
/// that the bytes after it start 16-byte aligned.
constexpr int64_t kHeader = 16;
/// Messages at least this large with one piece go in two steps (status, then data), so that
/// receivers can take the data straight into their tensors.
constexpr int64_t kDirectBytes = int64_t{1} << 20;
/// Messages in flight on one rank at most (besides the staging budget).
constexpr size_t kMaxInFlight = 64;
/// Device ring slots reserved beyond the ring's bytes (alignment of the messages in it).
constexpr int64_t kMaxGroupMessages = 16;
/// Pieces smaller than this are staged even with read_in_place: small tensors are read many
/// per pread (packed), which beats one read each.
constexpr int64_t kInPlaceBytes = int64_t{64} << 10;
/// Seconds between progress reports.
constexpr double kProgressEvery = 0.2;

/// How a message moves. Decided from the plan (and, for kDevice, from what every rank reported
/// in connect()), so every rank of a message agrees.
enum class Route {
  kLocal,    ///< this rank is its only receiver, host memory: read and land
  kOneStep,  ///< status word and bytes in one MPI delivery, landed from staging
  kTwoStep,  ///< the status first, then the bytes by MPI, straight into a tensor where possible
  kDevice,   ///< every receiver lands it in device memory: the status by MPI (several ranks),
             ///< then the bytes uploaded by the reader and delivered by the device transport
};

Route host_route(const LoadPlan& plan, const Message& m) {
  if (plan.ranks_of(m).size() == 1) return Route::kLocal;
  if (m.pieces.size() == 1 && m.nbytes >= kDirectBytes) return Route::kTwoStep;
  return Route::kOneStep;
}

/// Where a message of this rank is in the pipeline.
enum class Stage {
  kRead,     ///< waiting for its read (the reader) or for its status word (the others)
  kDeliver,  ///< its bytes are on their way (an MPI delivery, or its device group)
  kDone,     ///< landed (or skipped: its read failed); its buffers can go
};

/// One message of this rank on its way through the stages.
struct Slot {
  const Message* message = nullptr;
  size_t number = 0;  ///< position in the plan's message list
  Route route = Route::kLocal;
  Stage stage = Stage::kRead;
  bool reader = false;
  int64_t offset = 0;  ///< of its host buffer in the staging arena
  char* base = nullptr;
  ReadJob read;
  bool read_seen = false;  ///< the reader has taken its read's outcome
  std::unique_ptr<Delivery> status;
  int status_ok = -1;  ///< the reader's status word once known: 1 good, 0 failed, -1 unknown
  std::unique_ptr<Delivery> data;
  bool direct = false;  ///< the bytes go straight into this rank's tensor
  /// The reader's own tensor, when it reads a one-piece message in place
  /// (TransferOptions::read_in_place).
  char* in_place = nullptr;
  /// Where each piece of a message this rank alone receives is read in place (or nullptr: into
  /// staging); empty when none is.
  std::vector<char*> pieces_in_place;
  // The device route.
  int64_t group = -1;                ///< its device group (plan-wide numbering)
  char* device = nullptr;            ///< where its bytes land on the device (ring or tensor)
  int64_t ring_offset = -1;          ///< of its ring buffer (-1: none)
  std::shared_ptr<Delivery> landed;  ///< its group's marker: every landing of the group done
};

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
  explicit Impl(const TransferInputs& in) : in(in), rank(in.comm.rank()) {}

  TransferInputs in;
  const int rank;
  std::vector<const Message*> mine;
  std::unique_ptr<Transport> status_transport;  ///< status words (and failure notices)
  std::unique_ptr<Transport> data_transport;    ///< host bytes (MPI)
  std::string transport_name = "mpi";
  std::string transport_note;  ///< why device destinations took another path
  std::unique_ptr<StagingArena> arena;
  std::unique_ptr<ReadStage> readers;
  int64_t bytes_to_land = 0;
  // The device side: the backend of device destinations, and this rank's transport when the
  // ranks chose it.
  DeviceBackend* backend = nullptr;
  bool wants_device = false;  ///< some destination of this rank is in the backend's memory
  int device_index = -1;      ///< the device of those destinations
  bool mixed_devices = false;
  std::shared_ptr<DeviceTransport> device;
  char* ring_base = nullptr;
  OffsetRing ring;
  std::vector<bool> mine_on_device;  ///< per message of mine: all my pieces land on the device
  std::vector<Route> route;          ///< per message of mine
  std::vector<int64_t> group_of;     ///< per message of mine: its device group, or -1
  /// Per need of this rank: its tensor's bytes when it is a contiguous host tensor (a piece that
  /// covers it whole, in its dtype, lands with one memcpy); nullptr otherwise.
  std::vector<void*> whole_destination;
  bool abandoned = false;  ///< deliveries may still write into the arena: never free it

  bool on_device(const at::Tensor& t) const { return backend && backend->holds(t); }

  /// The part of this rank's tensor that `piece` covers.
  at::Tensor destination(const Piece& piece, int32_t need) const {
    const Need& n = in.my_needs[static_cast<size_t>(need)];
    const PartitionEntry& entry =
        in.partition.entries()[static_cast<size_t>(in.my_entry_of_need[static_cast<size_t>(need)])];
    at::Tensor view = entry.tensor;
    if (view.dim() == 0) return view;  // a 0-d tensor (also when loaded from a [1] tensor)
    for (size_t d = 0; d < piece.box.shape.size(); ++d) {
      view = view.narrow(static_cast<int64_t>(d), piece.box.offset[d] - n.region.offset[d],
                         piece.box.shape[d]);
    }
    return view;
  }

  /// This rank's destination of a single-piece message when the bytes can be received into it
  /// as they are: contiguous, the checkpoint's dtype, all of the message's bytes, in device
  /// memory (`dev`) or host memory. Undefined otherwise. 0-d tensors included: the bytes are
  /// addressed by data_ptr(), never through a dtype view.
  at::Tensor direct_destination(const Message& m, bool dev) const {
    if (m.pieces.size() != 1) return {};
    const Piece& piece = in.plan.pieces[static_cast<size_t>(m.pieces[0])];
    const int32_t need = in.plan.need_of(piece, rank);
    if (need < 0) return {};
    at::Tensor dst = destination(piece, need);
    const ChunkRecord& row = in.index[static_cast<size_t>(piece.chunk)];
    const bool right_memory = dev ? on_device(dst) : dst.device().is_cpu();
    if (right_memory && dst.is_contiguous() && dst.scalar_type() == scalar_type_of(row.dtype) &&
        dst.nbytes() == static_cast<size_t>(piece.nbytes) && piece.nbytes == m.nbytes) {
      return dst;
    }
    return {};
  }

  /// Whether every piece of `m` that this rank receives lands in device memory (false when it
  /// receives none).
  bool lands_on_device(const Message& m) const {
    bool any = false;
    for (int32_t p : m.pieces) {
      const Piece& piece = in.plan.pieces[static_cast<size_t>(p)];
      const int32_t need = in.plan.need_of(piece, rank);
      if (need < 0) continue;
      if (!on_device(destination(piece, need))) return false;
      any = true;
    }
    return any;
  }

  /// Calls `fn(piece, need, position)` for each piece of `m` that this rank receives, with the
  /// piece's position in the message's buffer.
  template <typename Fn>
  void for_my_pieces(const Message& m, Fn&& fn) const {
    int64_t pos = 0;
    for (int32_t p : m.pieces) {
      pos = aligned_piece_start(pos);
      const Piece& piece = in.plan.pieces[static_cast<size_t>(p)];
      if (const int32_t need = in.plan.need_of(piece, rank); need >= 0) fn(piece, need, pos);
      pos += piece.nbytes;
    }
  }

  /// Copies this rank's pieces of a message from its host bytes into the tensors, converting
  /// dtype like copy_ (a device destination: a host-to-device copy).
  int64_t land(const Message& m, const char* bytes, const std::vector<char*>& in_place = {}) const {
    int64_t landed = 0;
    size_t k = 0;
    for_my_pieces(m, [&](const Piece& piece, int32_t need, int64_t pos) {
      if (!in_place.empty() && in_place[k++]) {
        landed += piece.nbytes;  // read and verified where it lies
        return;
      }
      const ChunkRecord& row = in.index[static_cast<size_t>(piece.chunk)];
      const Need& n = in.my_needs[static_cast<size_t>(need)];
      void* whole = whole_destination[static_cast<size_t>(need)];
      if (whole && row.dtype == n.dtype && piece.box == n.region) {
        // The piece is this rank's whole tensor, as stored: a plain copy (most tensors of a
        // replicated load; no tensor operation per small tensor).
        std::memcpy(whole, bytes + pos, static_cast<size_t>(piece.nbytes));
      } else {
        at::Tensor src = at::from_blob(const_cast<char*>(bytes) + pos, piece.box.shape,
                                       at::TensorOptions().dtype(scalar_type_of(row.dtype)));
        at::Tensor dst = destination(piece, need);
        dst.copy_(src.view(dst.sizes()));
      }
      landed += piece.nbytes;
    });
    return landed;
  }

  /// Enqueues the device-side landing of this rank's pieces of `m` from its device buffer.
  int64_t land_on_device(const Slot& s) const {
    int64_t landed = 0;
    for_my_pieces(*s.message, [&](const Piece& piece, int32_t need, int64_t pos) {
      const ChunkRecord& row = in.index[static_cast<size_t>(piece.chunk)];
      device->land(destination(piece, need), s.device + pos, scalar_type_of(row.dtype),
                   piece.box.shape);
      landed += piece.nbytes;
    });
    return landed;
  }

  /// Reads `piece`, a part of chunk `row`, into `into` (verified).
  void read_part(const Piece& piece, const ChunkRecord& row, char* into) {
    Shape in_chunk(piece.box.offset.size());
    for (size_t d = 0; d < in_chunk.size(); ++d) in_chunk[d] = piece.box.offset[d] - row.offset[d];
    in.files.get(row.file).read(row, in_chunk, piece.box.shape, into, in.options.verify_checksums);
  }

  /// For a message this rank alone receives, with read_in_place: per piece, the tensor bytes it
  /// is read into directly (a piece of at least kInPlaceBytes that is all of a contiguous host
  /// destination in the stored dtype), or nullptr (read into staging and landed). Empty when
  /// none is.
  std::vector<char*> in_place_targets(const Message& m) const {
    std::vector<char*> out;
    bool any = false;
    for (int32_t p : m.pieces) {
      const Piece& piece = in.plan.pieces[static_cast<size_t>(p)];
      char* target = nullptr;
      if (piece.nbytes >= kInPlaceBytes) {
        const int32_t need = in.plan.need_of(piece, rank);
        const at::Tensor dst = destination(piece, need);
        const ChunkRecord& row = in.index[static_cast<size_t>(piece.chunk)];
        if (dst.device().is_cpu() && dst.is_contiguous() &&
            dst.scalar_type() == scalar_type_of(row.dtype) &&
            dst.nbytes() == static_cast<size_t>(piece.nbytes)) {
          target = static_cast<char*>(dst.data_ptr());
        }
      }
      any = any || target;
      out.push_back(target);
    }
    if (!any) out.clear();
    return out;
  }

  /// Reads every piece of `m` into `bytes` (this rank is its reader), each piece at its aligned
  /// position. Runs on a reader thread: every row was prepared on the driver thread, so the
  /// reads make no HDF5 call. Runs of pieces that are whole chunks of one file go in one call,
  /// which reads chunks adjacent in the file with one pread (packed small tensors); the pieces
  /// of a run are then moved apart to their aligned positions (last first: they only move up).
  int64_t read(const Message& m, char* bytes, const std::vector<char*>& in_place = {}) {
    maybe_inject_failure("read", rank);
    int64_t pos = 0, read_bytes = 0;
    std::vector<const ChunkRecord*> run;
    std::vector<std::pair<int64_t, int64_t>> run_places;  // (aligned position, nbytes)
    int32_t run_file = -1;
    auto flush = [&] {
      if (run.empty()) return;
      const int64_t start = run_places.front().first;
      in.files.get(run_file).read_chunks(run, bytes + start, in.options.verify_checksums);
      int64_t packed_end = start;
      for (const auto& [at, n] : run_places) packed_end += n;
      for (size_t k = run_places.size(); k-- > 0;) {
        const auto [at, n] = run_places[k];
        packed_end -= n;
        if (packed_end != at) std::memmove(bytes + at, bytes + packed_end, static_cast<size_t>(n));
      }
      run.clear();
      run_places.clear();
    };
    for (size_t k = 0; k < m.pieces.size(); ++k) {
      pos = aligned_piece_start(pos);
      const Piece& piece = in.plan.pieces[static_cast<size_t>(m.pieces[k])];
      const ChunkRecord& row = in.index[static_cast<size_t>(piece.chunk)];
      char* into = !in_place.empty() && in_place[k] ? in_place[k] : bytes + pos;
      if (into != bytes + pos) {
        flush();
        if (piece.box.offset == row.offset && piece.box.shape == row.shape) {
          const ChunkRecord* one[] = {&row};
          in.files.get(row.file).read_chunks(one, into, in.options.verify_checksums);
        } else {
          read_part(piece, row, into);
        }
      } else if (piece.box.offset == row.offset && piece.box.shape == row.shape) {
        if (row.file != run_file) flush();
        run_file = row.file;
        run.push_back(&row);
        run_places.emplace_back(pos, piece.nbytes);
      } else {
        flush();
        read_part(piece, row, bytes + pos);
      }
      pos += piece.nbytes;
      read_bytes += piece.nbytes;
    }
    flush();
    return read_bytes;
  }

  /// After a failure: ends the device's work in flight and keeps the staging memory that
  /// deliveries may still write; the reader threads stop.
  void abandon() {
    if (device) device->abort();
    if (status_transport) status_transport->abort();
    if (data_transport) data_transport->abort();
    abandoned = true;
    readers->stop();
  }

  /// Bytes of one device group at most (a group of one message may exceed it): a quarter of the
  /// staging budget, so that a group's reads fit beside older messages. The same on every rank.
  int64_t group_bytes() const { return std::max<int64_t>(in.options.staging_bytes / 4, 1); }

  void connect(PhaseRunner& phases);
  void assign_device_groups(const std::vector<bool>& device_message);
  /// Issues the next device group of this rank when every message of it is ready; true when it
  /// did (or skipped a group whose every message failed its read).
  bool issue_device_group(size_t& next, const std::vector<std::unique_ptr<Slot>>& slots,
                          size_t alloc_next, TransferOutcome& out);
  TransferOutcome run();

  /// Device groups of this rank, in order: the positions (in `mine`) of its messages in each.
  std::vector<std::vector<size_t>> my_groups;
};

Transfer::Transfer(const TransferInputs& in) : impl_(std::make_unique<Impl>(in)) {
  Impl& s = *impl_;
  const LoadPlan& plan = in.plan;
  s.backend = device_backend();
  for (const Message& m : plan.messages) {
    auto ranks = plan.ranks_of(m);
    if (!std::binary_search(ranks.begin(), ranks.end(), s.rank)) continue;
    s.mine.push_back(&m);
    for (int32_t p : m.pieces) {
      const Piece& piece = plan.pieces[static_cast<size_t>(p)];
      if (plan.need_of(piece, s.rank) >= 0) s.bytes_to_land += piece.nbytes;
      // Open every file this rank reads and check every chunk it reads now, on this thread:
      // the reader threads then only pread and hash.
      if (m.reader == s.rank) {
        const ChunkRecord& row = in.index[static_cast<size_t>(piece.chunk)];
        in.files.get(row.file).prepare(row);
      }
    }
  }
  // Where this rank's tensors live: host, or one device (several: no device route here).
  for (const PartitionEntry& e : in.partition.entries()) {
    if (!s.on_device(e.tensor)) continue;
    const int d = s.backend->device_of(e.tensor);
    if (s.wants_device && d != s.device_index) s.mixed_devices = true;
    s.wants_device = true;
    s.device_index = d;
  }
  for (const Message* m : s.mine)
    s.mine_on_device.push_back(s.wants_device && s.lands_on_device(*m));
  for (size_t need = 0; need < in.my_needs.size(); ++need) {
    const at::Tensor& t =
        in.partition.entries()[static_cast<size_t>(in.my_entry_of_need[need])].tensor;
    s.whole_destination.push_back(t.device().is_cpu() && t.is_contiguous() ? t.data_ptr()
                                                                           : nullptr);
  }
  // Host staging: what this rank holds of each message. A receiver of a device message that
  // does not read it holds only its status word.
  int64_t largest = 0, total = 0;
  for (size_t i = 0; i < s.mine.size(); ++i) {
    const Message& m = *s.mine[i];
    const int64_t size = kHeader + (m.reader == s.rank || !s.mine_on_device[i] ? m.nbytes : 0);
    // Whichever route the ranks choose, the largest message fits.
    largest = std::max(largest, kHeader + m.nbytes);
    total += size + 16;
  }
  // Page-locked staging when bytes go on to a device: the uploads run at full speed.
  const bool pinned = s.wants_device && s.backend == cuda_backend();
  s.arena = std::make_unique<StagingArena>(
      std::max(largest + 16, std::min(total, in.options.staging_bytes)), pinned);
  // Prepared reads are pread and hashing only: several reader threads overlap them with each
  // other and with the driver thread's deliveries and landings.
  s.readers = std::make_unique<ReadStage>(reader_threads(in.options, in.comm));
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
  if (comm.size() > 1) {
    status_transport = make_mpi_transport(comm);
    data_transport = make_mpi_transport(comm);
  }
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
  std::vector<uint8_t> host_chunks((in.index.size() + 7) / 8, 0);
  for (const Message* m : mine) {
    for_my_pieces(*m, [&](const Piece& piece, int32_t need, int64_t) {
      if (on_device(destination(piece, need))) return;
      const auto c = static_cast<size_t>(piece.chunk);
      host_chunks[c / 8] = static_cast<uint8_t>(host_chunks[c / 8] | (1u << (c % 8)));
    });
  }
  if (comm.size() > 1) comm.allreduce_or(host_chunks);
  std::vector<bool> device_message(mine.size(), false);
  for (size_t i = 0; i < mine.size(); ++i) {
    bool all = true;
    for (int32_t p : mine[i]->pieces) {
      const auto c = static_cast<size_t>(in.plan.pieces[static_cast<size_t>(p)].chunk);
      if (host_chunks[c / 8] & (1u << (c % 8))) all = false;
    }
    device_message[i] = all;
  }
  assign_device_groups(device_message);
  // The ring of device buffers, set up once: two groups' worth at most (no per-message device
  // allocation), no more than this rank's device messages need.
  int64_t need_ring = 0, largest = 0;
  for (size_t i = 0; i < mine.size(); ++i) {
    if (route[i] != Route::kDevice) continue;
    need_ring += aligned_piece_start(mine[i]->nbytes) + 16;
    largest = std::max(largest, mine[i]->nbytes);
  }
  ring = OffsetRing(std::max(std::min(need_ring, 2 * group_bytes() + 16 * kMaxGroupMessages),
                             aligned_piece_start(largest) + 16));
  phases.run("transfer", [&] { ring_base = device->begin(ring.capacity()); });
  transport_name = device->name();
}

void Transfer::Impl::assign_device_groups(const std::vector<bool>& device_message) {
  // One group per device message, numbered by the message itself (its first piece's chunk and
  // first element), so every rank of the message draws the same group from its own share of
  // the plan, and issues its groups in plan order, which is the same relative order everywhere.
  for (size_t i = 0; i < mine.size(); ++i) {
    if (!device_message[i]) continue;
    const Piece& first = in.plan.pieces[static_cast<size_t>(mine[i]->pieces.front())];
    const ChunkRecord& row = in.index[static_cast<size_t>(first.chunk)];
    uint64_t element = 0;
    for (size_t d = 0; d < row.shape.size(); ++d) {
      element = element * static_cast<uint64_t>(row.shape[d]) +
                static_cast<uint64_t>(first.box.offset[d] - row.offset[d]);
    }
    const uint64_t id = static_cast<uint64_t>(first.chunk) * 0x9e3779b97f4a7c15ull + element;
    route[i] = Route::kDevice;
    group_of[i] = static_cast<int64_t>(id >> 1);
    my_groups.push_back({i});
  }
}

bool Transfer::Impl::issue_device_group(size_t& next,
                                        const std::vector<std::unique_ptr<Slot>>& slots,
                                        size_t alloc_next, TransferOutcome& out) {
  if (next >= my_groups.size()) return false;
  const std::vector<size_t>& members = my_groups[next];
  if (members.back() >= alloc_next) return false;
  // Ready when every message's status is known (its read, on a one-rank message).
  for (size_t i : members) {
    Slot& s = *slots[i];
    if (s.status_ok < 0) return false;
  }
  // Device buffers: the tensor itself where it takes the bytes as they are, else the ring.
  for (size_t i : members) {
    Slot& s = *slots[i];
    if (s.status_ok != 1 || s.device) continue;
    if (at::Tensor dst = direct_destination(*s.message, /*dev=*/true); dst.defined()) {
      s.device = static_cast<char*>(dst.data_ptr());
      s.direct = true;
      continue;
    }
    auto offset = ring.allocate(s.message->nbytes);
    if (!offset) return false;  // older groups still hold the ring; their buffers come back
    s.ring_offset = *offset;
    s.device = ring_base + *offset;
  }
  const int64_t group = slots[members.front()]->group;
  bool any = false;
  for (size_t i : members) any = any || slots[i]->status_ok == 1;
  std::shared_ptr<Delivery> landed;
  if (any) {
    // The reader's verified bytes go up first; the group's deliveries follow on the same queue.
    for (size_t i : members) {
      Slot& s = *slots[i];
      if (s.status_ok == 1 && s.reader)
        device->upload(s.device, s.base + kHeader, s.message->nbytes);
    }
    device->group_begin(group);
    for (size_t i : members) {
      Slot& s = *slots[i];
      if (s.status_ok == 1) {
        device->start(s.device, s.message->nbytes, s.message->reader, in.plan.ranks_of(*s.message));
      }
    }
    std::unique_ptr<Delivery> delivered = device->group_end();
    for (size_t i : members) {
      Slot& s = *slots[i];
      if (s.status_ok != 1) continue;
      out.bytes_landed += s.direct ? s.message->nbytes : land_on_device(s);
      ++out.device_messages;
    }
    landed = device->mark();
  }
  for (size_t i : members) {
    Slot& s = *slots[i];
    s.landed = landed;
    s.stage = landed && s.status_ok == 1 ? Stage::kDeliver : Stage::kDone;
  }
  ++next;
  return true;
}

TransferOutcome Transfer::run() { return impl_->run(); }

TransferOutcome Transfer::Impl::run() {
  at::NoGradGuard no_grad;
  TransferOutcome out;
  auto fail = [&](ErrorKind kind, const std::string& error) {
    if (out.failed != ErrorKind::kNone) return;
    out.failed = kind;
    out.error = error;
  };
  // A copy into a tensor that fails (it cannot, short of a bug or a full device) is this rank's
  // failure; the others go on to the end of the plan.
  auto land_or_fail = [&](const Slot& s, const char* bytes,
                          const std::vector<char*>& in_place = {}) {
    try {
      out.bytes_landed += land(*s.message, bytes, in_place);
    } catch (const std::exception& e) {
      fail(current_error_kind(), "landing message " + std::to_string(s.number) + ": " + e.what());
    }
  };
  auto status_of = [](const Slot& s) {
    uint64_t status;
    std::memcpy(&status, s.base, sizeof status);
    return status == 0 ? 1 : 0;
  };
  const size_t n = mine.size();
  std::vector<std::unique_ptr<Slot>> slots(n);
  size_t alloc_next = 0, status_next = 0, data_next = 0, release_next = 0, group_next = 0;
  Poller idle;  // measures how long nothing moved (the stall deadline)
  uint64_t reads_seen = 0;
  auto last_report = std::chrono::steady_clock::now();
  const auto start = last_report;

  try {
    while (release_next < n) {
      bool progressed = false;

      // Stage 1, read: buffers in plan order (so the oldest message always gets one), reads
      // queued to the reader threads.
      while (alloc_next < n && alloc_next - release_next < kMaxInFlight) {
        const Message& m = *mine[alloc_next];
        const bool reader = m.reader == rank;
        const Route r = route[alloc_next];
        // Read in place (an option): the reader's bytes go straight into its own tensor, and
        // a two-step delivery sends them from there; only the status word is staged.
        char* in_place = nullptr;
        if (reader && in.options.read_in_place && (r == Route::kLocal || r == Route::kTwoStep)) {
          if (at::Tensor dst = direct_destination(m, /*dev=*/false); dst.defined()) {
            in_place = static_cast<char*>(dst.data_ptr());
          }
        }
        auto offset = arena->allocate(
            kHeader + (!in_place && (reader || r != Route::kDevice) ? m.nbytes : 0));
        if (!offset) break;
        auto slot = std::make_unique<Slot>();
        slot->message = &m;
        slot->number = static_cast<size_t>(&m - in.plan.messages.data());
        slot->route = r;
        slot->group = group_of[alloc_next];
        slot->reader = reader;
        slot->offset = *offset;
        slot->base = arena->data() + *offset;
        std::memset(slot->base, 0, kHeader);
        slot->in_place = in_place;
        if (reader && in.options.read_in_place && r == Route::kLocal && !in_place) {
          slot->pieces_in_place = in_place_targets(m);
        }
        if (slot->reader) {
          Slot* raw = slot.get();
          char* into = in_place ? in_place : raw->base + kHeader;
          raw->read.work = [this, raw, into] {
            return read(*raw->message, into, raw->pieces_in_place);
          };
          readers->submit(&raw->read);
        }
        slots[alloc_next++] = std::move(slot);
        progressed = true;
      }

      // A finished read: its outcome goes into the status word; the reader lands its own copy
      // of host messages.
      for (size_t i = release_next; i < alloc_next; ++i) {
        Slot& s = *slots[i];
        if (!s.reader || s.read_seen) continue;
        const int state = s.read.state.load(std::memory_order_acquire);
        if (state == 0) continue;
        s.read_seen = true;
        progressed = true;
        const uint64_t status = state == 1 ? 0 : 1;
        std::memcpy(s.base, &status, sizeof status);
        if (state == 1) {
          out.bytes_read += s.read.bytes;
          if (s.in_place) {
            out.bytes_landed += s.message->nbytes;  // verified where it lies
          } else if (s.route != Route::kDevice) {
            land_or_fail(s, s.base + kHeader, s.pieces_in_place);
          }
        } else {
          fail(s.read.kind, s.read.error);
        }
        // The reader knows its status; alone on a message, nothing goes anywhere.
        if (s.route == Route::kDevice && in.plan.ranks_of(*s.message).size() == 1) {
          s.status_ok = state == 1 ? 1 : 0;
        }
      }

      // Stage 2, deliver. Status words of two-step and device messages first, in plan order (a
      // reader's waits for its read).
      while (status_next < alloc_next) {
        Slot& s = *slots[status_next];
        const bool multi = in.plan.ranks_of(*s.message).size() > 1;
        if (multi && (s.route == Route::kTwoStep || s.route == Route::kDevice)) {
          if (s.reader && !s.read_seen) break;
          s.status = status_transport->start(s.base, kHeader, s.message->reader,
                                             in.plan.ranks_of(*s.message));
        }
        ++status_next;
        progressed = true;
      }
      for (size_t i = release_next; i < status_next; ++i) {
        Slot& s = *slots[i];
        if (s.status && s.status->test()) {
          s.status.reset();
          s.status_ok = status_of(s);
          progressed = true;
        }
      }
      // Then the host data, in plan order on every rank.
      while (data_next < status_next) {
        Slot& s = *slots[data_next];
        const Message& m = *s.message;
        if (s.route == Route::kOneStep) {
          if (s.reader && !s.read_seen) break;
          s.data = data_transport->start(s.base, static_cast<size_t>(kHeader + m.nbytes), m.reader,
                                         in.plan.ranks_of(m));
          s.stage = Stage::kDeliver;
        } else if (s.route == Route::kTwoStep) {
          if (s.status_ok < 0) break;
          if (s.status_ok == 1) {
            void* into = s.in_place ? s.in_place : s.base + kHeader;
            if (!s.reader) {
              if (at::Tensor dst = direct_destination(m, /*dev=*/false); dst.defined()) {
                into = dst.data_ptr();
                s.direct = true;
              }
            }
            s.data = data_transport->start(into, static_cast<size_t>(m.nbytes), m.reader,
                                           in.plan.ranks_of(m));
          }
          s.stage = Stage::kDeliver;
        } else if (s.route == Route::kLocal) {
          if (s.reader && !s.read_seen) break;
          s.stage = Stage::kDeliver;
        }
        // Device messages go by groups (below).
        ++data_next;
        progressed = true;
      }
      // Device groups, in plan order; each issued whole, with the same boundaries everywhere.
      while (device && issue_device_group(group_next, slots, alloc_next, out)) progressed = true;

      // Stage 3, land: completed deliveries are copied into this rank's tensors.
      for (size_t i = release_next; i < alloc_next; ++i) {
        Slot& s = *slots[i];
        if (s.stage != Stage::kDeliver) continue;
        if (s.route == Route::kDevice) {
          if (!s.landed->test()) continue;
        } else {
          if (s.data && !s.data->test()) continue;
          if (!s.reader) {
            if (s.route == Route::kOneStep) {
              if (status_of(s) == 1) land_or_fail(s, s.base + kHeader);
            } else if (s.route == Route::kTwoStep && s.status_ok == 1) {
              if (s.direct) {
                out.bytes_landed += s.message->nbytes;
              } else {
                land_or_fail(s, s.base + kHeader);
              }
            }
          }
        }
        s.stage = Stage::kDone;
        progressed = true;
      }
      while (release_next < alloc_next && slots[release_next]->stage == Stage::kDone &&
             (release_next < data_next || slots[release_next]->route == Route::kDevice)) {
        Slot& s = *slots[release_next];
        if (s.ring_offset >= 0) {
          const int64_t size = ring.release(s.ring_offset);
          device->retire(ring_base + s.ring_offset, size);
        }
        arena->release(s.offset);
        slots[release_next].reset();
        ++release_next;
        progressed = true;
      }

      if (in.options.progress && seconds_since(last_report) >= kProgressEvery) {
        last_report = std::chrono::steady_clock::now();
        in.options.progress(
            Progress{"load", "transfer", out.bytes_landed, bytes_to_land, seconds_since(start)});
      }
      if (progressed) {
        idle.reset();
        continue;
      }
      // Nothing moved. A failure a peer announced ends this rank's transfer too, at once.
      if (status_transport) {
        if (std::string failure = status_transport->announced_failure(); !failure.empty()) {
          throw CommError("the transfer failed on " + failure);
        }
      }
      // MPI's non-blocking operations advance only inside MPI calls, so while a delivery is in
      // flight keep testing (yielding the core between tests); when only reads are awaited,
      // sleep until a reader thread finishes one.
      bool delivering = false;
      for (size_t i = release_next; i < alloc_next && !delivering; ++i) {
        const Slot& s = *slots[i];
        delivering = s.stage == Stage::kDeliver || s.status;
      }
      const double timeout = in.comm.timeout();
      const double stall = in.comm.stall_seconds();
      const double waited = idle.elapsed();
      if (release_next < alloc_next &&
          ((timeout > 0 && waited > timeout) || (stall > 0 && waited > stall))) {
        // The oldest unfinished message names whom this rank is waiting for.
        const Slot& s = *slots[release_next];
        std::vector<int> peers;
        if (!s.reader) {
          peers.push_back(s.message->reader);
        } else if (s.read_seen) {
          for (int r : in.plan.ranks_of(*s.message)) {
            if (r != rank) peers.push_back(r);
          }
        }
        if (peers.empty()) {
          // Its own read is what is stuck (a hung filesystem): say so.
          peers.push_back(rank);
        }
        const std::string what = "message " + std::to_string(s.number) + " of the plan, " +
                                 std::to_string(s.message->nbytes) + " bytes, read by rank " +
                                 std::to_string(s.message->reader);
        if (timeout > 0 && waited > timeout) in.comm.throw_stalled(peers, what);
        // Before the deadline: a stall line naming the peers (once per message waited on).
        in.comm.report_stalled(waited, static_cast<int64_t>(s.number), peers, what);
      }
      if (delivering) {
        sched_yield();
      } else {
        reads_seen = readers->wait_finished(reads_seen, std::chrono::microseconds(500));
      }
    }
    if (device) device->finish();
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
    if (status_transport) status_transport->announce_failure(text);
    throw CommError(message);
  }
  readers->stop();
  out.transport = device ? transport_name : "mpi";
  out.transport_note = transport_note;
  out.staging_peak = arena->peak();
  return out;
}

}  // namespace shardload
