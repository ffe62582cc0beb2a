// The NCCL backend: CUDA buffers, built only with SHARDLOAD_WITH_NCCL (CMake adds this file then).
#include "shardload/config.h"

#if SHARDLOAD_WITH_NCCL
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "transport/communicator.h"
#include "transport/transport.h"

namespace shardload {
namespace {

void check_cuda(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw CommError(std::string(what) + " failed: " + cudaGetErrorString(rc));
}
void check_nccl(ncclResult_t rc, const char* what) {
  if (rc != ncclSuccess && rc != ncclInProgress) {
    throw CommError(std::string(what) + " failed: " + ncclGetErrorString(rc));
  }
}
#define SHARDLOAD_CUDA(call) check_cuda((call), #call)
#define SHARDLOAD_NCCL(call) check_nccl((call), #call)

/// Largest part of one NCCL call (keeps counts in a comfortable range).
constexpr size_t kMaxPart = size_t{1} << 30;

/// One NCCL communicator on one device, with its own stream. The destructor aborts rather than
/// destroys: ncclCommDestroy can block forever when a peer is gone.
class NcclComm {
 public:
  NcclComm(const Communicator& comm, int device) : device_(device), size_(comm.size()) {
    SHARDLOAD_CUDA(cudaSetDevice(device));
    ncclUniqueId id;
    std::string bytes;
    if (comm.rank() == 0) {
      SHARDLOAD_NCCL(ncclGetUniqueId(&id));
      bytes.assign(reinterpret_cast<const char*>(&id), sizeof id);
    }
    comm.broadcast(bytes, 0);
    if (bytes.size() != sizeof id) throw CommError("NCCL unique id of the wrong size");
    std::memcpy(&id, bytes.data(), sizeof id);
    SHARDLOAD_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    // Non-blocking initialisation, polled under the communicator's deadline.
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    SHARDLOAD_NCCL(ncclCommInitRankConfig(&comm_, size_, id, comm.rank(), &config));
    wait_ready(comm.timeout(), "ncclCommInitRankConfig");
  }
  ~NcclComm() {
    if (comm_) ncclCommAbort(comm_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  ncclComm_t get() const { return comm_; }
  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  int size() const { return size_; }

  /// Throws CommError (after aborting) when NCCL reports an asynchronous error.
  void check() {
    ncclResult_t async = ncclSuccess;
    SHARDLOAD_NCCL(ncclCommGetAsyncError(comm_, &async));
    if (async != ncclSuccess && async != ncclInProgress) {
      abort();
      throw CommError(std::string("NCCL failed: ") + ncclGetErrorString(async));
    }
  }
  void abort() {
    if (comm_) ncclCommAbort(comm_);
    comm_ = nullptr;
    aborted_ = true;
  }
  bool aborted() const { return aborted_; }

  /// Waits for a non-blocking NCCL call (initialisation, group end) to finish.
  void wait_ready(double timeout, const char* what) {
    auto start = std::chrono::steady_clock::now();
    for (;;) {
      ncclResult_t state = ncclSuccess;
      SHARDLOAD_NCCL(ncclCommGetAsyncError(comm_, &state));
      if (state == ncclSuccess) return;
      if (state != ncclInProgress) {
        abort();
        throw CommError(std::string(what) + " failed: " + ncclGetErrorString(state));
      }
      if (timeout > 0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() >
              timeout) {
        abort();
        throw TimeoutError(std::string(what) + " did not complete within " +
                               std::to_string(timeout) + " s (a rank did not join NCCL)",
                           /*reporter=*/true);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }

 private:
  int device_;
  int size_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  bool aborted_ = false;
};

/// Completion of work queued on the NCCL stream; polls NCCL's asynchronous errors meanwhile.
class NcclDelivery : public Delivery {
 public:
  NcclDelivery(std::shared_ptr<NcclComm> comm) : comm_(std::move(comm)) {
    SHARDLOAD_CUDA(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    SHARDLOAD_CUDA(cudaEventRecord(event_, comm_->stream()));
  }
  ~NcclDelivery() override {
    if (event_) cudaEventDestroy(event_);
  }
  bool test() override {
    cudaError_t rc = cudaEventQuery(event_);
    if (rc == cudaErrorNotReady) {
      comm_->check();
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

class NcclTransport : public Transport {
 public:
  NcclTransport(std::shared_ptr<NcclComm> comm, int rank, double timeout)
      : comm_(std::move(comm)), rank_(rank), timeout_(timeout) {}
  std::string name() const override { return "nccl"; }
  bool supports(MemoryKind kind) const override { return kind == MemoryKind::kCuda; }

  std::unique_ptr<Delivery> start(void* data, size_t nbytes, int root,
                                  std::span<const int> ranks) override {
    if (comm_->aborted()) throw CommError("the NCCL communicator was aborted");
    // The root's bytes arrive by a copy queued on the device's current stream: wait for it.
    cudaStream_t current = c10::cuda::getCurrentCUDAStream(comm_->device()).stream();
    cudaEvent_t ready;
    SHARDLOAD_CUDA(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    SHARDLOAD_CUDA(cudaEventRecord(ready, current));
    SHARDLOAD_CUDA(cudaStreamWaitEvent(comm_->stream(), ready, 0));
    cudaEventDestroy(ready);
    auto* bytes = static_cast<char*>(data);
    const bool everyone = static_cast<int>(ranks.size()) == comm_->size();
    if (!grouped_) SHARDLOAD_NCCL(ncclGroupStart());
    for (size_t pos = 0; pos < nbytes; pos += kMaxPart) {
      const size_t n = std::min(kMaxPart, nbytes - pos);
      if (everyone) {
        SHARDLOAD_NCCL(ncclBroadcast(bytes + pos, bytes + pos, n, ncclUint8, root, comm_->get(),
                                     comm_->stream()));
        continue;
      }
      for (int r : ranks) {
        if (r == root) continue;
        if (rank_ == root) {
          SHARDLOAD_NCCL(ncclSend(bytes + pos, n, ncclUint8, r, comm_->get(), comm_->stream()));
        } else if (r == rank_) {
          SHARDLOAD_NCCL(ncclRecv(bytes + pos, n, ncclUint8, root, comm_->get(), comm_->stream()));
        }
      }
    }
    if (!grouped_) end();
    return std::make_unique<NcclDelivery>(comm_);
  }
  void group_begin() override {
    if (grouped_) return;
    SHARDLOAD_NCCL(ncclGroupStart());
    grouped_ = true;
  }
  void group_end() override {
    if (!grouped_) return;
    grouped_ = false;
    end();
  }
  void abort() override { comm_->abort(); }

 private:
  void end() {
    ncclResult_t rc = ncclGroupEnd();
    // A non-blocking communicator may still be enqueuing the group: the operations are on the
    // stream (so the delivery's event follows them) once it reports success.
    if (rc == ncclInProgress) {
      comm_->wait_ready(timeout_, "ncclGroupEnd");
      return;
    }
    SHARDLOAD_NCCL(rc);
  }

  std::shared_ptr<NcclComm> comm_;
  int rank_;
  double timeout_;
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

}  // namespace

bool nccl_built() { return true; }

RankDevice local_device_report(bool wants_cuda, int device, bool mixed_devices) {
  RankDevice d;
  d.wants_cuda = wants_cuda;
  d.nccl_built = true;
  d.mixed_devices = mixed_devices;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();
    d.device = -1;
    return d;
  }
  d.device = device >= 0 && device < count ? device : -1;
  if (d.device >= 0) {
    char bus[64] = {0};
    if (cudaDeviceGetPCIBusId(bus, sizeof bus, d.device) == cudaSuccess) {
      char host[256] = {0};
      gethostname(host, sizeof host - 1);
      d.gpu_id = std::string(host) + "/" + bus;
    } else {
      cudaGetLastError();
      d.gpu_id = "device " + std::to_string(d.device);
    }
  }
  return d;
}

std::shared_ptr<Transport> make_nccl_transport(const Communicator& comm, int device) {
  MPI_Comm parent = comm.parent();
  SHARDLOAD_CUDA(cudaSetDevice(device));
  void* value = nullptr;
  int found = 0;
  SHARDLOAD_MPI(MPI_Comm_get_attr(parent, cache_keyval(), &value, &found));
  auto* cache = static_cast<CommCache*>(found ? value : nullptr);
  if (!cache) {
    cache = new CommCache;
    SHARDLOAD_MPI(MPI_Comm_set_attr(parent, cache_keyval(), cache));
  }
  // Every rank asks for its communicator the same way, so all reuse or all make one.
  std::shared_ptr<NcclComm> nccl;
  {
    std::lock_guard<std::mutex> lock(cache->mutex);
    auto it = cache->by_device.find(device);
    if (it != cache->by_device.end() && !it->second->aborted()) nccl = it->second;
  }
  const int64_t everyone_has =
      -comm.allreduce_max(static_cast<int64_t>(nccl ? 0 : 1)) + 1;  // all ranks reuse, or none
  if (!everyone_has) {
    nccl = std::make_shared<NcclComm>(comm, device);
    std::lock_guard<std::mutex> lock(cache->mutex);
    cache->by_device[device] = nccl;
  }
  return std::make_shared<NcclTransport>(std::move(nccl), comm.rank(), comm.timeout());
}

}  // namespace shardload
#endif  // SHARDLOAD_WITH_NCCL
