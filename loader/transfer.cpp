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
#include "transport/transport.h"
#include "transport/transport_choice.h"

namespace shardload {
namespace {

/// Every message buffer starts with the reader's status word (0: the bytes are good).
constexpr int64_t kHeader = 8;
/// Messages at least this large with one piece go in two steps (status, then data), so that
/// receivers can take the data straight into their tensors.
constexpr int64_t kDirectBytes = int64_t{1} << 20;
/// Messages in flight on one rank at most (besides the staging budget).
constexpr size_t kMaxInFlight = 64;
/// Seconds between progress reports.
constexpr double kProgressEvery = 0.2;

/// How a message moves. Decided from the plan alone, so every rank of a message agrees.
enum class Route {
  kLocal,    ///< this rank is its only receiver: read and land
  kOneStep,  ///< status word and bytes in one MPI delivery, landed from staging
  kTwoStep,  ///< the status first, then the bytes by MPI, straight into a tensor where possible
  kNccl,     ///< the status by MPI, then the bytes from the reader's GPU to the others' by NCCL
};

/// `cuda_everywhere`: every receiver holds all its pieces of the message in CUDA memory and the
/// ranks chose NCCL.
Route route_of(const LoadPlan& plan, const Message& m, bool cuda_everywhere) {
  if (plan.ranks_of(m).size() == 1) return Route::kLocal;
  if (cuda_everywhere) return Route::kNccl;
  if (m.pieces.size() == 1 && m.nbytes >= kDirectBytes) return Route::kTwoStep;
  return Route::kOneStep;
}

/// Whether a route sends its status word separately, before the data.
bool two_step(Route r) { return r == Route::kTwoStep || r == Route::kNccl; }

/// One message of this rank on its way through the stages.
struct Slot {
  const Message* message = nullptr;
  size_t number = 0;  ///< position in the plan's message list (for messages)
  Route route = Route::kLocal;
  bool reader = false;
  int64_t offset = 0;  ///< of its buffer in the staging arena
  char* base = nullptr;
  ReadJob read;
  bool read_seen = false;
  std::unique_ptr<Delivery> status;
  bool status_ok = false;
  bool status_known = false;
  std::unique_ptr<Delivery> data;
  bool data_issued = false;
  bool data_done = false;
  bool direct = false;
  at::Tensor device_buffer;  ///< kNccl: where the bytes land on this rank's GPU
  bool done = false;
};

/// Reader threads per rank: LoadOptions::reader_threads, or (0) the cores of this machine shared
/// by the ranks on it, at least one, at most eight.
int reader_threads(const LoadOptions& options) {
  if (options.reader_threads > 0) return options.reader_threads;
  const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  const int local_ranks = local ? std::max(1, std::atoi(local)) : 1;
  const int cores = static_cast<int>(std::thread::hardware_concurrency());
  return std::clamp(cores / local_ranks, 1, 8);
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
  std::unique_ptr<Transport> status_transport;  ///< status words of two-step messages
  std::unique_ptr<Transport> data_transport;    ///< host bytes (MPI)
  std::shared_ptr<Transport> cuda_transport;    ///< CUDA bytes (NCCL), when the ranks chose it
  std::string transport_name = "mpi";
  std::string transport_note;  ///< why not NCCL, when CUDA destinations took another path
  std::unique_ptr<StagingArena> arena;
  std::unique_ptr<ReadStage> readers;
  int64_t bytes_to_land = 0;
  bool wants_cuda = false;  ///< some destination of this rank is in CUDA memory
  int device = -1;          ///< the CUDA device of those destinations
  bool mixed_devices = false;
  std::vector<bool> mine_on_cuda;  ///< per message of mine: all my pieces land in CUDA memory
  /// Per need of this rank: its tensor's bytes when it is a contiguous host tensor (a piece that
  /// covers it whole, in its dtype, lands with one memcpy); nullptr otherwise.
  std::vector<void*> whole_destination;
  std::vector<bool> nccl_route;  ///< per message of mine: every receiver's pieces do (kNccl)
  bool abandoned = false;        ///< deliveries may still write into the arena: never free it

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
  /// as they are: a contiguous view of the checkpoint's dtype, in host memory (`cuda` false) or
  /// in CUDA memory (`cuda` true). Undefined otherwise.
  at::Tensor direct_destination(const Message& m, bool cuda) const {
    if (m.pieces.size() != 1) return {};
    const Piece& piece = in.plan.pieces[static_cast<size_t>(m.pieces[0])];
    const int32_t need = in.plan.need_of(piece, rank);
    if (need < 0) return {};
    at::Tensor dst = destination(piece, need);
    const ChunkRecord& row = in.index[static_cast<size_t>(piece.chunk)];
    if (dst.device().is_cuda() == cuda && (cuda || dst.device().is_cpu()) && dst.is_contiguous() &&
        dst.scalar_type() == scalar_type_of(row.dtype) &&
        dst.nbytes() == static_cast<size_t>(piece.nbytes)) {
      return dst;
    }
    return {};
  }

  /// Whether every piece of `m` that this rank receives lands in CUDA memory (false when it
  /// receives none).
  bool lands_on_cuda(const Message& m) const {
    bool any = false;
    for (int32_t p : m.pieces) {
      const Piece& piece = in.plan.pieces[static_cast<size_t>(p)];
      const int32_t need = in.plan.need_of(piece, rank);
      if (need < 0) continue;
      if (!destination(piece, need).is_cuda()) return false;
      any = true;
    }
    return any;
  }

  /// Copies this rank's pieces of a message from its bytes into the tensors, converting dtype
  /// like copy_. `bytes` is host staging memory, or (`device_bytes` defined) a buffer on the
  /// GPU, for a device-side copy.
  int64_t land(const Message& m, const char* bytes, const at::Tensor& device_bytes = {}) const {
    int64_t pos = 0, landed = 0;
    for (int32_t p : m.pieces) {
      const Piece& piece = in.plan.pieces[static_cast<size_t>(p)];
      if (const int32_t need = in.plan.need_of(piece, rank); need >= 0) {
        const ChunkRecord& row = in.index[static_cast<size_t>(piece.chunk)];
        const Need& n = in.my_needs[static_cast<size_t>(need)];
        void* whole = whole_destination[static_cast<size_t>(need)];
        if (!device_bytes.defined() && whole && row.dtype == n.dtype && piece.box == n.region) {
          // The piece is this rank's whole tensor, as stored: a plain copy (most tensors of a
          // replicated load; no tensor operation per small tensor).
          std::memcpy(whole, bytes + pos, static_cast<size_t>(piece.nbytes));
        } else {
          const at::ScalarType type = scalar_type_of(row.dtype);
          at::Tensor src =
              device_bytes.defined()
                  ? device_bytes.narrow(0, pos, piece.nbytes).view(type).view(piece.box.shape)
                  : at::from_blob(const_cast<char*>(bytes) + pos, piece.box.shape,
                                  at::TensorOptions().dtype(type));
          at::Tensor dst = destination(piece, need);
          dst.copy_(src.view(dst.sizes()));
        }
        landed += piece.nbytes;
      }
      pos += piece.nbytes;
    }
    return landed;
  }

  /// Reads every piece of `m` into `bytes` (this rank is its reader). Runs on a reader thread:
  /// every row was prepared on the driver thread, so the reads make no HDF5 call. Runs of pieces
  /// that are whole chunks of one file go in one call, which reads chunks adjacent in the file
  /// with one pread (packed small tensors).
  int64_t read(const Message& m, char* bytes) {
    maybe_inject_failure("read", rank);
    int64_t pos = 0;
    std::vector<const ChunkRecord*> run;
    int64_t run_bytes = 0;
    int32_t run_file = -1;
    auto flush = [&] {
      if (run.empty()) return;
      in.files.get(run_file).read_chunks(run, bytes + pos, in.options.verify_checksums);
      pos += run_bytes;
      run.clear();
      run_bytes = 0;
    };
    for (int32_t p : m.pieces) {
      const Piece& piece = in.plan.pieces[static_cast<size_t>(p)];
      const ChunkRecord& row = in.index[static_cast<size_t>(piece.chunk)];
      if (piece.box.offset == row.offset && piece.box.shape == row.shape) {
        if (row.file != run_file) flush();
        run_file = row.file;
        run.push_back(&row);
        run_bytes += piece.nbytes;
        continue;
      }
      flush();
      Shape in_chunk(piece.box.offset.size());
      for (size_t d = 0; d < in_chunk.size(); ++d)
        in_chunk[d] = piece.box.offset[d] - row.offset[d];
      in.files.get(row.file).read(row, in_chunk, piece.box.shape, bytes + pos,
                                  in.options.verify_checksums);
      pos += piece.nbytes;
    }
    flush();
    return pos;
  }

  /// Starts the NCCL delivery of a message whose status is good: the bytes go into this rank's
  /// tensor when it can take them as they are (one piece, contiguous, same dtype), else into a
  /// device buffer landed later with a device-side copy; the reader first copies its verified
  /// staging bytes to that buffer. Opens the transport's group on the first start.
  void issue_nccl(Slot& s) {
    const Message& m = *s.message;
    cuda_transport->group_begin();
    at::Tensor dst = direct_destination(m, /*cuda=*/true);
    if (dst.defined()) {
      s.device_buffer = dst.view(at::kByte).view({m.nbytes});
      s.direct = true;
    } else {
      s.device_buffer =
          at::empty({m.nbytes}, at::TensorOptions().dtype(at::kByte).device(
                                    at::Device(at::kCUDA, static_cast<int8_t>(device))));
    }
    if (s.reader) {
      at::Tensor staged = at::from_blob(s.base + kHeader, {m.nbytes},
                                        at::TensorOptions().dtype(at::kByte).pinned_memory(true));
      s.device_buffer.copy_(staged, /*non_blocking=*/true);
    }
    s.data = cuda_transport->start(s.device_buffer.data_ptr(), static_cast<size_t>(m.nbytes),
                                   m.reader, in.plan.ranks_of(m));
  }

  TransferOutcome run();
};

Transfer::Transfer(const TransferInputs& in) : impl_(std::make_unique<Impl>(in)) {
  Impl& s = *impl_;
  const LoadPlan& plan = in.plan;
  int64_t largest = 0, total = 0;
  for (const Message& m : plan.messages) {
    auto ranks = plan.ranks_of(m);
    if (!std::binary_search(ranks.begin(), ranks.end(), s.rank)) continue;
    s.mine.push_back(&m);
    largest = std::max(largest, kHeader + m.nbytes);
    total += kHeader + m.nbytes + 8;
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
  // Where this rank's tensors live: host, or one CUDA device (several: no NCCL for this rank).
  for (const PartitionEntry& e : in.partition.entries()) {
    if (!e.tensor.defined() || !e.tensor.is_cuda()) continue;
    const int d = e.tensor.device().index();
    if (s.wants_cuda && d != s.device) s.mixed_devices = true;
    s.wants_cuda = true;
    s.device = d;
  }
  for (const Message* m : s.mine) s.mine_on_cuda.push_back(s.lands_on_cuda(*m));
  for (size_t need = 0; need < in.my_needs.size(); ++need) {
    const at::Tensor& t =
        in.partition.entries()[static_cast<size_t>(in.my_entry_of_need[need])].tensor;
    s.whole_destination.push_back(t.device().is_cpu() && t.is_contiguous() ? t.data_ptr()
                                                                           : nullptr);
  }
  // Page-locked staging when bytes go on to a GPU: the host-to-device copies run at full speed.
  s.arena = std::make_unique<StagingArena>(
      std::max(largest + 8, std::min(total, in.options.staging_bytes)), /*pinned=*/s.wants_cuda);
  // Prepared reads are pread and hashing only: several reader threads overlap them with each
  // other and with the driver thread's deliveries and landings.
  s.readers = std::make_unique<ReadStage>(reader_threads(in.options));
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

void Transfer::connect() {
  Impl& s = *impl_;
  const Communicator& comm = s.in.comm;
  s.nccl_route.assign(s.mine.size(), false);
  if (comm.size() == 1) {
    // Nothing crosses ranks: host staging and, for CUDA tensors, host-to-device copies.
    if (s.wants_cuda) s.transport_note = "one rank: host staging and host-to-device copies";
    return;
  }
  s.status_transport = make_mpi_transport(comm);
  s.data_transport = make_mpi_transport(comm);

  // The backend for CUDA-to-CUDA messages: every rank reports its devices, all decide alike.
  int device = s.device;
  if (device < 0) {
    // A rank with no CUDA tensor of its own still joins NCCL on its local rank's device.
    const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    device = local ? std::atoi(local) : 0;
  }
  std::vector<RankDevice> reports;
  for (const std::string& bytes : comm.allgather(
           serialize_rank_device(local_device_report(s.wants_cuda, device, s.mixed_devices)))) {
    reports.push_back(deserialize_rank_device(bytes));
  }
  const TransportChoice choice = choose_transport(reports);
  s.transport_note = choice.reason;
  if (!choice.nccl) return;
  s.cuda_transport = make_nccl_transport(comm, reports[static_cast<size_t>(comm.rank())].device);
  s.transport_name = "nccl";

  // A message goes by NCCL when every one of its receivers lands all its pieces on a GPU: each
  // rank tells, for its messages in plan order, whether it does.
  std::string mine_bits((s.mine.size() + 7) / 8, '\0');
  for (size_t i = 0; i < s.mine.size(); ++i) {
    if (s.mine_on_cuda[i]) mine_bits[i / 8] = static_cast<char>(mine_bits[i / 8] | (1 << (i % 8)));
  }
  const std::vector<std::string> bits = comm.allgather(mine_bits);
  std::vector<size_t> position(bits.size(), 0);  // per rank: its messages seen so far
  size_t i_mine = 0;
  for (const Message& m : s.in.plan.messages) {
    bool all_cuda = true;
    bool with_me = false;
    for (int r : s.in.plan.ranks_of(m)) {
      const size_t k = position[static_cast<size_t>(r)]++;
      const std::string& b = bits[static_cast<size_t>(r)];
      if (k / 8 >= b.size() || !(b[k / 8] & (1 << (k % 8)))) all_cuda = false;
      with_me = with_me || r == comm.rank();
    }
    if (with_me) s.nccl_route[i_mine++] = all_cuda;
  }
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
  auto land_or_fail = [&](const Slot& s, const char* bytes, const at::Tensor& device_bytes = {}) {
    try {
      out.bytes_landed += land(*s.message, bytes, device_bytes);
    } catch (const std::exception& e) {
      fail(current_error_kind(), "landing message " + std::to_string(s.number) + ": " + e.what());
    }
  };
  const size_t n = mine.size();
  std::vector<std::unique_ptr<Slot>> slots(n);
  size_t alloc_next = 0, status_next = 0, data_next = 0, release_next = 0;
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
        auto offset = arena->allocate(kHeader + m.nbytes);
        if (!offset) break;
        auto slot = std::make_unique<Slot>();
        slot->message = &m;
        slot->number = static_cast<size_t>(&m - in.plan.messages.data());
        slot->route = route_of(in.plan, m, nccl_route[alloc_next]);
        slot->reader = m.reader == rank;
        slot->offset = *offset;
        slot->base = arena->data() + *offset;
        std::memset(slot->base, 0, kHeader);
        if (slot->reader) {
          Slot* raw = slot.get();
          raw->read.work = [this, raw] { return read(*raw->message, raw->base + kHeader); };
          readers->submit(&raw->read);
        }
        slots[alloc_next++] = std::move(slot);
        progressed = true;
      }

      // A finished read: its outcome goes into the status word; the reader lands its own copy.
      for (size_t i = release_next; i < alloc_next; ++i) {
        Slot& s = *slots[i];
        if (!s.reader || s.read_seen) continue;
        const int state = s.read.state.load(std::memory_order_acquire);
        if (state == 0) continue;
        s.read_seen = true;
        progressed = true;
        uint64_t status = state == 1 ? 0 : 1;
        std::memcpy(s.base, &status, kHeader);
        if (state == 1) {
          out.bytes_read += s.read.bytes;
          // By NCCL the reader's own pieces land from its device buffer, like everyone's.
          if (s.route != Route::kNccl) land_or_fail(s, s.base + kHeader);
        } else {
          fail(s.read.kind, s.read.error);
        }
      }

      // Stage 2, deliver. Status words of two-step messages first, in plan order (a reader's
      // waits for its read).
      while (status_next < alloc_next) {
        Slot& s = *slots[status_next];
        if (two_step(s.route)) {
          if (s.reader && !s.read_seen) break;
          s.status = status_transport->start(s.base, kHeader, s.message->reader,
                                             in.plan.ranks_of(*s.message));
        }
        ++status_next;
        progressed = true;
      }
      // Then the data, in plan order on every rank; NCCL messages ready together go out as one
      // group (several roots in flight).
      bool grouped = false;
      while (data_next < status_next) {
        Slot& s = *slots[data_next];
        const Message& m = *s.message;
        if (s.route == Route::kOneStep) {
          if (s.reader && !s.read_seen) break;
          s.data = data_transport->start(s.base, static_cast<size_t>(kHeader + m.nbytes), m.reader,
                                         in.plan.ranks_of(m));
        } else if (two_step(s.route)) {
          if (!s.status_known) {
            if (!s.status->test()) break;
            s.status.reset();
            uint64_t status;
            std::memcpy(&status, s.base, kHeader);
            s.status_known = true;
            s.status_ok = status == 0;
          }
          if (s.status_ok && s.route == Route::kTwoStep) {
            void* into = s.base + kHeader;
            if (!s.reader) {
              if (at::Tensor dst = direct_destination(m, /*cuda=*/false); dst.defined()) {
                into = dst.data_ptr();
                s.direct = true;
              }
            }
            s.data = data_transport->start(into, static_cast<size_t>(m.nbytes), m.reader,
                                           in.plan.ranks_of(m));
          } else if (s.status_ok) {
            issue_nccl(s);
            if (!grouped) {
              // issue_nccl opened the group with its first start.
              grouped = true;
            }
          }
        }
        s.data_issued = true;
        ++data_next;
        progressed = true;
      }
      if (grouped) cuda_transport->group_end();

      // Stage 3, land: completed deliveries are copied into this rank's tensors.
      for (size_t i = release_next; i < data_next; ++i) {
        Slot& s = *slots[i];
        if (s.done) continue;
        if (s.reader && !s.read_seen) continue;
        if (s.data && !s.data_done) {
          if (!s.data->test()) continue;
          s.data_done = true;
          progressed = true;
        }
        if (s.status) {
          if (!s.status->test()) continue;
          s.status.reset();
        }
        if (s.route == Route::kNccl) {
          if (s.status_ok) {
            if (s.direct) {
              out.bytes_landed += s.message->nbytes;
            } else {
              land_or_fail(s, nullptr, s.device_buffer);
            }
          }
          s.device_buffer = at::Tensor();
        } else if (!s.reader) {
          if (s.route == Route::kOneStep) {
            uint64_t status;
            std::memcpy(&status, s.base, kHeader);
            if (status == 0) land_or_fail(s, s.base + kHeader);
          } else if (s.status_ok) {
            if (s.direct) {
              out.bytes_landed += s.message->nbytes;
            } else {
              land_or_fail(s, s.base + kHeader);
            }
          }
        }
        s.done = true;
        progressed = true;
      }
      while (release_next < data_next && slots[release_next]->done) {
        arena->release(slots[release_next]->offset);
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
      // Nothing moved. MPI's non-blocking operations advance only inside MPI calls, so while a
      // delivery is in flight keep testing (yielding the core between tests); when only reads
      // are awaited, sleep until a reader thread finishes one.
      bool delivering = false;
      for (size_t i = release_next; i < data_next && !delivering; ++i) {
        const Slot& s = *slots[i];
        delivering = (s.data && !s.data_done) || s.status;
      }
      for (size_t i = data_next; i < status_next && !delivering; ++i) {
        delivering = slots[i]->status != nullptr;
      }
      const double timeout = in.comm.timeout();
      if (timeout > 0 && idle.elapsed() > timeout) {
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
        in.comm.throw_stalled(peers, "message " + std::to_string(s.number) + " of the plan, " +
                                         std::to_string(s.message->nbytes) +
                                         " bytes, read by rank " +
                                         std::to_string(s.message->reader));
      }
      if (delivering) {
        sched_yield();
      } else {
        reads_seen = readers->wait_finished(reads_seen, std::chrono::microseconds(500));
      }
    }
  } catch (...) {
    if (cuda_transport) cuda_transport->abort();
    // Only the transport gets here (a timeout or an MPI failure): deliveries may be left in
    // flight, so the staging memory is kept; the reader threads stop before the slots go.
    abandoned = true;
    readers->stop();
    throw;
  }
  readers->stop();
  out.transport = transport_name;
  out.transport_note = transport_note;
  return out;
}

}  // namespace shardload
