// The CUDA + NCCL device backend (transport/device_transport.h), built only with
// SHARDLOAD_WITH_NCCL (CMake adds this file then). Everything CUDA- and NCCL-specific lives here.
#include "shardload/config.h"

#if SHARDLOAD_WITH_NCCL
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "core/error.h"
#include "transport/communicator.h"
#include "transport/device_transport.h"

namespace shardload {
namespace {

[[noreturn]] void fail_call(const std::string& what, const char* why, const char* file, int line) {
  throw CommError(what + " failed: " + why + " (" + file + ":" + std::to_string(line) + ")");
}
void check_cuda(cudaError_t rc, const char* what, const char* file, int line) {
  if (rc != cudaSuccess) fail_call(what, cudaGetErrorString(rc), file, line);
}
#define SHARDLOAD_CUDA(call) check_cuda((call), #call, __FILE__, __LINE__)

/// Largest part of one NCCL call (keeps counts in a comfortable range).
constexpr size_t kMaxPart = size_t{1} << 30;

/// One NCCL communicator on one device, non-blocking. The destructor aborts rather than
/// destroys: ncclCommDestroy can block forever when a peer is gone.
class NcclComm {
 public:
  NcclComm(const Communicator& comm, int device)
      : rank_(comm.rank()), size_(comm.size()), timeout_(comm.timeout()) {
    SHARDLOAD_CUDA(cudaSetDevice(device));
    ncclUniqueId id;
    std::string bytes, error;
    if (comm.rank() == 0) {
      // Rank 0 always takes part in the broadcast, so that a failure here is everyone's at once.
      const ncclResult_t rc = ncclGetUniqueId(&id);
      if (rc == ncclSuccess) {
        bytes.assign(reinterpret_cast<const char*>(&id), sizeof id);
      } else {
        error = ncclGetErrorString(rc);
      }
    }
    comm.broadcast(bytes, 0);
    if (bytes.size() != sizeof id) {
      throw CommError("rank 0 could not make an NCCL unique id" +
                      (error.empty() ? std::string() : ": " + error));
    }
    std::memcpy(&id, bytes.data(), sizeof id);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    call(ncclCommInitRankConfig(&comm_, size_, id, comm.rank(), &config), "ncclCommInitRankConfig",
         __FILE__, __LINE__);
  }
  ~NcclComm() { abort(); }
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  ncclComm_t get() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool aborted() const { return comm_ == nullptr; }

  /// The non-blocking contract: a call that returns ncclInProgress is finished only when the
  /// communicator's state leaves ncclInProgress; nothing else may be called on it before.
  void call(ncclResult_t rc, const char* what, const char* file, int line) {
    if (rc == ncclInProgress) {
      wait_ready(what, file, line);
    } else if (rc != ncclSuccess) {
      abort();
      fail_call(what, ncclGetErrorString(rc), file, line);
    }
  }

  /// Throws CommError (after aborting) when NCCL reports an asynchronous error.
  void check() {
    if (!comm_) throw CommError("the NCCL communicator was aborted");
    ncclResult_t state = ncclSuccess;
    const ncclResult_t rc = ncclCommGetAsyncError(comm_, &state);
    if (rc != ncclSuccess || (state != ncclSuccess && state != ncclInProgress)) {
      abort();
      throw CommError(std::string("NCCL failed: ") +
                      ncclGetErrorString(rc != ncclSuccess ? rc : state));
    }
  }

  void abort() {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

 private:
  void wait_ready(const char* what, const char* file, int line) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      ncclResult_t state = ncclSuccess;
      const ncclResult_t rc = ncclCommGetAsyncError(comm_, &state);
      if (rc != ncclSuccess) state = rc;
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) {
        abort();
        fail_call(what, ncclGetErrorString(state), file, line);
      }
      if (timeout_ > 0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
              timeout_) {
        abort();
        throw TimeoutError(std::string(what) + " did not complete within " +
                               std::to_string(timeout_) + " s (a rank did not join NCCL)",
                           /*reporter=*/true);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

  int rank_;
  int size_;
  double timeout_;
  ncclComm_t comm_ = nullptr;
};
#define SHARDLOAD_NCCL(comm, expr) (comm).call((expr), #expr, __FILE__, __LINE__)

/// A CUDA event recorded on a stream: done when the work enqueued before it has finished.
class EventMarker : public Delivery {
 public:
  EventMarker(cudaStream_t stream, std::shared_ptr<NcclComm> comm) : comm_(std::move(comm)) {
    SHARDLOAD_CUDA(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    SHARDLOAD_CUDA(cudaEventRecord(event_, stream));
  }
  ~EventMarker() override {
    if (event_) cudaEventDestroy(event_);
  }
  bool test() override {
    const cudaError_t rc = cudaEventQuery(event_);
    if (rc == cudaErrorNotReady) {
      if (comm_) comm_->check();
      return false;
    }
    SHARDLOAD_CUDA(rc);
    return true;
  }
  void wait() override {
    while (!test()) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }

 private:
  std::shared_ptr<NcclComm> comm_;
  cudaEvent_t event_ = nullptr;
};

/// Makes `waiter` wait for the work enqueued on `signaller` so far.
void order_after(cudaStream_t waiter, cudaStream_t signaller) {
  cudaEvent_t event;
  SHARDLOAD_CUDA(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  SHARDLOAD_CUDA(cudaEventRecord(event, signaller));
  SHARDLOAD_CUDA(cudaStreamWaitEvent(waiter, event, 0));
  cudaEventDestroy(event);
}

class CudaTransport : public DeviceTransport {
 public:
  explicit CudaTransport(int device) : device_(device) {
    SHARDLOAD_CUDA(cudaSetDevice(device));
    SHARDLOAD_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  }
  ~CudaTransport() override {
    if (ring_.defined()) cudaStreamSynchronize(stream_);
    ring_ = at::Tensor();
    if (stream_) cudaStreamDestroy(stream_);
  }

  std::string name() const override { return comm_ ? "nccl" : "cuda"; }
  void set_comm(std::shared_ptr<NcclComm> comm) { comm_ = std::move(comm); }
  const std::shared_ptr<NcclComm>& comm() const { return comm_; }

  char* begin(int64_t capacity) override {
    SHARDLOAD_CUDA(cudaSetDevice(device_));
    // Allocated while our stream is current: the caching allocator ties the block to it, so
    // freeing it later can never hand it to other work before ours has finished.
    c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromExternal(stream_, device_));
    ring_ = at::empty({std::max<int64_t>(capacity, 16)},
                      at::TensorOptions().dtype(at::kByte).device(at::kCUDA, device_));
    // Destinations may still be written by kernels on the caller's stream.
    order_after(stream_, c10::cuda::getCurrentCUDAStream(device_).stream());
    return static_cast<char*>(ring_.data_ptr());
  }
  void retire(char*, int64_t) override {}

  void upload(void* dst, const void* host, int64_t nbytes) override {
    SHARDLOAD_CUDA(
        cudaMemcpyAsync(dst, host, static_cast<size_t>(nbytes), cudaMemcpyHostToDevice, stream_));
  }

  void group_begin(int64_t) override {
    if (grouped_) throw CommError("an NCCL group is already open");
    if (comm_) {
      comm_->check();
      SHARDLOAD_NCCL(*comm_, ncclGroupStart());
    }
    grouped_ = true;
  }

  void start(void* data, int64_t nbytes, int root, std::span<const int> ranks) override {
    if (ranks.size() <= 1) return;
    if (!comm_) throw CommError("a delivery between ranks without an NCCL communicator");
    auto* bytes = static_cast<char*>(data);
    const bool everyone = static_cast<int>(ranks.size()) == comm_->size();
    const int me = comm_->rank();
    for (size_t pos = 0; pos < static_cast<size_t>(nbytes); pos += kMaxPart) {
      const size_t n = std::min(kMaxPart, static_cast<size_t>(nbytes) - pos);
      if (everyone) {
        SHARDLOAD_NCCL(*comm_, ncclBroadcast(bytes + pos, bytes + pos, n, ncclUint8, root,
                                             comm_->get(), stream_));
        continue;
      }
      for (int r : ranks) {
        if (r == root) continue;
        if (me == root) {
          SHARDLOAD_NCCL(*comm_, ncclSend(bytes + pos, n, ncclUint8, r, comm_->get(), stream_));
        } else if (r == me) {
          SHARDLOAD_NCCL(*comm_, ncclRecv(bytes + pos, n, ncclUint8, root, comm_->get(), stream_));
        }
      }
    }
  }

  std::unique_ptr<Delivery> group_end() override {
    if (!grouped_) throw CommError("ncclGroupEnd without an open group");
    grouped_ = false;
    // The group's operations are on the stream once ncclGroupEnd (and, non-blocking, the
    // communicator's state) says so: only then can an event follow them.
    if (comm_) SHARDLOAD_NCCL(*comm_, ncclGroupEnd());
    return std::make_unique<EventMarker>(stream_, comm_);
  }

  void land(const at::Tensor& dst, const void* src, at::ScalarType type,
            const Shape& shape) override {
    c10::cuda::CUDAStreamGuard guard(c10::cuda::getStreamFromExternal(stream_, device_));
    at::Tensor from = at::from_blob(const_cast<void*>(src), shape,
                                    at::TensorOptions().dtype(type).device(at::kCUDA, device_));
    dst.copy_(from.view(dst.sizes()), /*non_blocking=*/true);
  }

  std::unique_ptr<Delivery> mark() override {
    return std::make_unique<EventMarker>(stream_, comm_);
  }

  void finish() override {
    // The caller's work after load() (on its current stream) waits for ours; the ring goes back
    // to the caching allocator, tied to our stream.
    order_after(c10::cuda::getCurrentCUDAStream(device_).stream(), stream_);
    ring_ = at::Tensor();
  }

  void abort() override {
    if (grouped_) {
      grouped_ = false;
      if (comm_ && !comm_->aborted()) ncclGroupEnd();  // closes the group; errors don't matter
    }
    if (comm_) comm_->abort();
    // Work may still write the ring: keep its memory for the life of the process.
    static std::vector<at::Tensor> kept;
    if (ring_.defined()) kept.push_back(std::move(ring_));
  }

 private:
  int device_;
  cudaStream_t stream_ = nullptr;
  std::shared_ptr<NcclComm> comm_;
  at::Tensor ring_;
  bool grouped_ = false;
};

/// NCCL communicators cached on the MPI communicator they were made for (MPI attribute
/// caching), one per device: made once, reused by every later load on that communicator.
struct CommCache {
  std::mutex mutex;
  std::map<int, std::shared_ptr<NcclComm>> by_device;
};

int cache_keyval() {
  static int keyval = [] {
    int k = MPI_KEYVAL_INVALID;
    MPI_Comm_create_keyval(
        MPI_COMM_NULL_COPY_FN,
        [](MPI_Comm, int, void* value, void*) -> int {
          delete static_cast<CommCache*>(value);  // aborts the NCCL communicators
          return MPI_SUCCESS;
        },
        &k, nullptr);
    return k;
  }();
  return keyval;
}

/// NCCL's own identity of this host: NCCL_HOSTID when set, else the host name and boot id (what
/// NCCL compares to tell ranks on one machine from ranks on another).
std::string nccl_host_identity() {
  if (const char* id = std::getenv("NCCL_HOSTID"); id && *id) return id;
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  std::string boot;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot;
  return std::string(host) + ":" + boot;
}

class CudaBackend : public DeviceBackend {
 public:
  bool holds(const at::Tensor& t) const override { return t.defined() && t.is_cuda(); }
  int device_of(const at::Tensor& t) const override { return t.device().index(); }

  RankDevice report(int device, bool wants, bool mixed, const Communicator& comm) override {
    RankDevice d;
    d.wants_cuda = wants;
    d.nccl_built = true;
    d.mixed_devices = mixed;
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      cudaGetLastError();
      return d;
    }
    d.device = device >= 0 ? (device < count ? device : -1) : comm.local_rank() % count;
    if (d.device >= 0) {
      char bus[64] = {0};
      if (cudaDeviceGetPCIBusId(bus, sizeof bus, d.device) != cudaSuccess) {
        cudaGetLastError();
        std::snprintf(bus, sizeof bus, "device %d", d.device);
      }
      d.gpu_id = nccl_host_identity() + "/" + bus;
    }
    return d;
  }

  std::shared_ptr<DeviceTransport> open(const Communicator&, int device) override {
    return std::make_shared<CudaTransport>(device);
  }

  void join(DeviceTransport& transport, const Communicator& comm) override {
    auto& cuda = static_cast<CudaTransport&>(transport);
    if (comm.size() == 1) return;
    int device = 0;
    SHARDLOAD_CUDA(cudaGetDevice(&device));
    MPI_Comm parent = comm.parent();
    void* value = nullptr;
    int found = 0;
    SHARDLOAD_MPI(MPI_Comm_get_attr(parent, cache_keyval(), &value, &found));
    auto* cache = static_cast<CommCache*>(found ? value : nullptr);
    if (!cache) {
      cache = new CommCache;
      SHARDLOAD_MPI(MPI_Comm_set_attr(parent, cache_keyval(), cache));
    }
    std::shared_ptr<NcclComm> nccl;
    {
      std::lock_guard<std::mutex> lock(cache->mutex);
      auto it = cache->by_device.find(device);
      if (it != cache->by_device.end() && !it->second->aborted()) nccl = it->second;
    }
    // Every rank reuses its communicator, or all make a new one.
    if (comm.allreduce_max(static_cast<int64_t>(nccl ? 0 : 1)) != 0) {
      nccl = std::make_shared<NcclComm>(comm, device);
      std::lock_guard<std::mutex> lock(cache->mutex);
      cache->by_device[device] = nccl;
    }
    cuda.set_comm(std::move(nccl));
  }
};

}  // namespace

DeviceBackend* cuda_backend() {
  static CudaBackend backend;
  return &backend;
}

}  // namespace shardload
#endif  // SHARDLOAD_WITH_NCCL
