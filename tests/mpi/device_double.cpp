#include "tests/mpi/device_double.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <mpi.h>

#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "core/error.h"
#include "transport/communicator.h"

namespace shardload::testing {
namespace {

constexpr unsigned char kPoison = 0xDB;
constexpr int kTagHeader = 9101;
constexpr int kTagData = 9102;
/// A delivery that makes no progress for this long fails (no test may hang on the double).
constexpr double kStallSeconds = 60;

/// Open groups of this thread, over every transport: NCCL's group state is per thread.
thread_local int open_groups = 0;

/// The "stream": a worker thread that runs enqueued work in order, each item after a random
/// delay. The first failure sticks: later markers report it.
class Stream {
 public:
  Stream(int max_delay_us, unsigned seed)
      : max_delay_us_(max_delay_us), rng_(seed), worker_([this] { loop(); }) {}
  ~Stream() { join(); }

  /// Stops the worker after what is queued (nothing, after abort()) and waits for it.
  void join() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  /// Enqueues `work`; returns its sequence number (1, 2, ...).
  int64_t enqueue(std::function<void()> work) {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(work));
    ++enqueued_;
    wake_.notify_all();
    return enqueued_;
  }
  int64_t enqueued() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return enqueued_;
  }
  /// Whether work up to `seq` has run; throws CommError when some work failed.
  bool done(int64_t seq) const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!error_.empty()) throw CommError("device double: " + error_);
    return executed_ >= seq;
  }
  /// Drops what has not run yet; stops waiting inside running work.
  void abort() {
    std::lock_guard<std::mutex> lock(mutex_);
    aborted_ = true;
    queue_.clear();
  }
  bool aborted() const { return aborted_.load(); }

 private:
  void loop() {
    at::NoGradGuard no_grad;  // landings into parameters that require grad
    for (;;) {
      std::function<void()> work;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;
        work = std::move(queue_.front());
        queue_.pop_front();
      }
      if (max_delay_us_ > 0) {
        std::this_thread::sleep_for(
            std::chrono::microseconds(std::uniform_int_distribution<int>(0, max_delay_us_)(rng_)));
      }
      std::string error;
      try {
        if (!aborted_) work();
      } catch (const std::exception& e) {
        error = e.what();
      }
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error.empty() && error_.empty()) error_ = error;
      ++executed_;
    }
  }

  const int max_delay_us_;
  std::mt19937 rng_;
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  int64_t enqueued_ = 0;
  int64_t executed_ = 0;
  std::string error_;
  bool stopping_ = false;
  std::atomic<bool> aborted_{false};
  std::thread worker_;
};

class Marker : public Delivery {
 public:
  Marker(std::shared_ptr<Stream> stream, int64_t seq) : stream_(std::move(stream)), seq_(seq) {}
  bool test() override { return stream_->done(seq_); }
  void wait() override {
    while (!test()) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }

 private:
  std::shared_ptr<Stream> stream_;
  int64_t seq_;
};

/// One grouped delivery, as start() recorded it.
struct Op {
  char* data;
  int64_t nbytes;
  int root;
  std::vector<int> ranks;
};

class DoubleTransport : public DeviceTransport {
 public:
  DoubleTransport(int rank, const DoubleOptions& options,
                  std::shared_ptr<std::atomic<int64_t>> groups)
      : rank_(rank),
        options_(options),
        groups_(std::move(groups)),
        stream_(std::make_shared<Stream>(
            options.max_delay_us, static_cast<unsigned>(rank * 7919 + std::random_device{}()))) {}
  ~DoubleTransport() override {
    // The worker may be inside a delivery that reads stream_: stop it before anything goes.
    stream_->abort();
    stream_->join();
    int finalized = 0;
    MPI_Finalized(&finalized);
    // Deliveries an abort() left unmatched stay on the communicator: never freed then.
    if (comm_ != MPI_COMM_NULL && !finalized && !abandoned_) MPI_Comm_free(&comm_);
  }

  std::string name() const override { return "double"; }
  void set_comm(MPI_Comm comm, int size) {
    comm_ = comm;
    size_ = size;
  }

  char* begin(int64_t capacity) override {
    ring_ = at::empty({std::max<int64_t>(capacity, 16)}, at::kByte);
    std::memset(ring_.data_ptr(), kPoison, static_cast<size_t>(ring_.numel()));
    return static_cast<char*>(ring_.data_ptr());
  }
  void retire(char* data, int64_t nbytes) override {
    std::memset(data, kPoison, static_cast<size_t>(nbytes));
  }

  void upload(void* dst, const void* host, int64_t nbytes) override {
    stream_->enqueue([=] { std::memcpy(dst, host, static_cast<size_t>(nbytes)); });
  }

  void group_begin(int64_t group) override {
    if (grouped_) throw CommError("device double: group_begin inside an open group");
    grouped_ = true;
    ++open_groups;
    group_ = group;
    pending_.clear();
  }

  void start(void* data, int64_t nbytes, int root, std::span<const int> ranks) override {
    if (!grouped_) throw CommError("device double: start() outside a group");
    if (rank_ == options_.fail_start_rank && starts_++ >= options_.fail_start_after) {
      throw CommError("device double: injected failure of a delivery");
    }
    if (ranks.size() <= 1) return;
    pending_.push_back(Op{static_cast<char*>(data), nbytes, root, {ranks.begin(), ranks.end()}});
  }

  std::unique_ptr<Delivery> group_end() override {
    if (!grouped_) throw CommError("device double: group_end without an open group");
    grouped_ = false;
    --open_groups;
    ++*groups_;
    // Only now do the group's deliveries reach the stream, and they run later on the worker.
    const int64_t seq = stream_->enqueue(
        [this, ops = std::move(pending_), group = group_] { deliver(ops, group); });
    pending_.clear();
    return std::make_unique<Marker>(stream_, seq);
  }

  void land(const at::Tensor& dst, const void* src, at::ScalarType type,
            const Shape& shape) override {
    stream_->enqueue([dst, src, type, shape] {
      if (reinterpret_cast<uintptr_t>(src) % 16 != 0) {
        throw CommError("landing from a misaligned device address (a piece not 16-byte aligned)");
      }
      at::Tensor from =
          at::from_blob(const_cast<void*>(src), shape, at::TensorOptions().dtype(type));
      at::Tensor into = dst;
      into.copy_(from.view(dst.sizes()));
    });
  }

  std::unique_ptr<Delivery> mark() override {
    return std::make_unique<Marker>(stream_, stream_->enqueued());
  }

  void finish() override {
    // The "caller's stream" is the host: it is ordered after our work once the work is done.
    Marker(stream_, stream_->enqueued()).wait();
    std::memset(ring_.data_ptr(), kPoison, static_cast<size_t>(ring_.numel()));
    ring_ = at::Tensor();
  }

  void abort() override {
    abandoned_ = true;
    if (grouped_) {
      grouped_ = false;
      --open_groups;
      pending_.clear();
    }
    stream_->abort();
    static std::vector<at::Tensor> kept;  // work may still touch the ring
    if (ring_.defined()) kept.push_back(std::move(ring_));
  }

 private:
  /// Runs on the worker: every delivery of one group, its header (the sender's group number and
  /// size) first and checked by every receiver. Point-to-point only, so that a delivery abandoned
  /// after a failure can be cancelled: no receive may write into a buffer after it is gone.
  void deliver(const std::vector<Op>& ops, int64_t group) {
    for (const Op& op : ops) {
      std::vector<int64_t> header = {group, op.nbytes};
      post_and_wait(op, header.data(), static_cast<int64_t>(sizeof(int64_t) * 2), kTagHeader);
      if (header[0] != group || header[1] != op.nbytes) {
        throw CommError("group signature mismatch: rank " + std::to_string(op.root) +
                        " delivered " + std::to_string(header[1]) + " bytes in group " +
                        std::to_string(header[0]) + ", rank " + std::to_string(rank_) +
                        " expected " + std::to_string(op.nbytes) + " bytes in group " +
                        std::to_string(group));
      }
      post_and_wait(op, op.data, op.nbytes, kTagData);
    }
  }

  void post_and_wait(const Op& op, void* buf, int64_t n, int tag) {
    std::vector<MPI_Request> reqs;
    bool receiving = false;
    if (rank_ == op.root) {
      for (int r : op.ranks) {
        if (r == op.root) continue;
        reqs.emplace_back();
        MPI_Isend(buf, static_cast<int>(n), MPI_BYTE, r, tag, comm_, &reqs.back());
      }
    } else {
      receiving = true;
      reqs.emplace_back();
      MPI_Irecv(buf, static_cast<int>(n), MPI_BYTE, op.root, tag, comm_, &reqs.back());
    }
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      int done = 0;
      MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &done, MPI_STATUSES_IGNORE);
      if (done) return;
      const bool stalled =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
          kStallSeconds;
      if (stream_->aborted() || stalled) {
        // Nothing may write into `buf` once we return: cancel the receive and wait for the
        // cancellation; sends only read, they are left to MPI.
        for (MPI_Request& req : reqs) {
          if (req == MPI_REQUEST_NULL) continue;
          if (receiving) {
            MPI_Cancel(&req);
            MPI_Wait(&req, MPI_STATUS_IGNORE);
          } else {
            MPI_Request_free(&req);
          }
        }
        throw CommError(stalled ? "a delivery made no progress in " +
                                      std::to_string(kStallSeconds) + " s"
                                : std::string("aborted"));
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  const int rank_;
  const DoubleOptions options_;
  std::shared_ptr<std::atomic<int64_t>> groups_;
  std::shared_ptr<Stream> stream_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int size_ = 1;
  at::Tensor ring_;
  bool grouped_ = false;
  int64_t group_ = -1;
  int starts_ = 0;
  bool abandoned_ = false;
  std::vector<Op> pending_;
};

}  // namespace

RankDevice DeviceDouble::report(int device, bool wants, bool mixed, const Communicator& comm) {
  ++reports_;
  RankDevice d;
  d.wants_cuda = wants;
  d.nccl_built = true;
  d.mixed_devices = mixed;
  d.device = device >= 0 ? device : 0;
  d.gpu_id = "double/rank-" + std::to_string(comm.rank());
  return d;
}

std::shared_ptr<DeviceTransport> DeviceDouble::open(const Communicator& comm, int) {
  if (comm.rank() == options_.fail_open_rank) {
    throw CommError("device double: injected set-up failure of the device");
  }
  return std::make_shared<DoubleTransport>(comm.rank(), options_, groups_);
}

void DeviceDouble::join(DeviceTransport& transport, const Communicator& comm) {
  if (open_groups != 0) {
    // NCCL defers communicator set-up inside an open group to its end: it would wait forever.
    throw CommError("device double: communicator set-up inside a group left open (" +
                    std::to_string(open_groups) + "): NCCL would wait forever");
  }
  if (comm.size() == 1) return;
  int provided = 0;
  MPI_Query_thread(&provided);
  if (provided < MPI_THREAD_MULTIPLE) {
    throw CommError("device double: its stream thread calls MPI, which needs MPI_THREAD_MULTIPLE");
  }
  MPI_Comm dup = MPI_COMM_NULL;
  SHARDLOAD_MPI(MPI_Comm_dup(comm.handle(), &dup));
  static_cast<DoubleTransport&>(transport).set_comm(dup, comm.size());
}

}  // namespace shardload::testing
