// The NCCL backend: CUDA buffers, built only with SHARDLOAD_WITH_NCCL (CMake adds this file then).
#include "shardload/config.h"

#if SHARDLOAD_WITH_NCCL
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>

#include "core/error.h"
#include "transport/communicator.h"
#include "transport/transport.h"

namespace shardload {
namespace {

void check_cuda(cudaError_t rc, const char* what) {
  if (rc != cudaSuccess) throw CommError(std::string(what) + " failed: " + cudaGetErrorString(rc));
}
void check_nccl(ncclResult_t rc, const char* what) {
  if (rc != ncclSuccess) throw CommError(std::string(what) + " failed: " + ncclGetErrorString(rc));
}
#define SHARDLOAD_CUDA(call) check_cuda((call), #call)
#define SHARDLOAD_NCCL(call) check_nccl((call), #call)

/// Completion of work queued on the transport's stream.
class NcclDelivery : public Delivery {
 public:
  explicit NcclDelivery(cudaStream_t stream) {
    SHARDLOAD_CUDA(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming));
    SHARDLOAD_CUDA(cudaEventRecord(event_, stream));
  }
  ~NcclDelivery() override {
    if (event_) {
      cudaEventSynchronize(event_);
      cudaEventDestroy(event_);
    }
  }
  bool test() override {
    cudaError_t rc = cudaEventQuery(event_);
    if (rc == cudaErrorNotReady) return false;
    SHARDLOAD_CUDA(rc);
    return true;
  }
  void wait() override { SHARDLOAD_CUDA(cudaEventSynchronize(event_)); }

 private:
  cudaEvent_t event_ = nullptr;
};

class NcclTransport : public Transport {
 public:
  explicit NcclTransport(const Communicator& comm) : size_(comm.size()), rank_(comm.rank()) {
    ncclUniqueId id;
    std::string bytes;
    if (rank_ == 0) {
      SHARDLOAD_NCCL(ncclGetUniqueId(&id));
      bytes.assign(reinterpret_cast<const char*>(&id), sizeof id);
    }
    comm.broadcast(bytes, 0);
    std::memcpy(&id, bytes.data(), sizeof id);
    SHARDLOAD_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    SHARDLOAD_NCCL(ncclCommInitRank(&comm_, size_, id, rank_));
  }
  ~NcclTransport() override {
    // Abort rather than destroy: destroy can block forever when a peer is gone.
    if (comm_) ncclCommAbort(comm_);
    if (stream_) cudaStreamDestroy(stream_);
  }
  std::string name() const override { return "nccl"; }
  bool supports(MemoryKind kind) const override { return kind == MemoryKind::kCuda; }

  std::unique_ptr<Delivery> start(void* data, size_t nbytes, int root,
                                  std::span<const int> ranks) override {
    if (static_cast<int>(ranks.size()) == size_) {
      SHARDLOAD_NCCL(ncclBroadcast(data, data, nbytes, ncclUint8, root, comm_, stream_));
    } else {
      SHARDLOAD_NCCL(ncclGroupStart());
      for (int r : ranks) {
        if (r == root) continue;
        if (rank_ == root) {
          SHARDLOAD_NCCL(ncclSend(data, nbytes, ncclUint8, r, comm_, stream_));
        } else if (r == rank_) {
          SHARDLOAD_NCCL(ncclRecv(data, nbytes, ncclUint8, root, comm_, stream_));
        }
      }
      SHARDLOAD_NCCL(ncclGroupEnd());
    }
    return std::make_unique<NcclDelivery>(stream_);
  }

 private:
  int size_;
  int rank_;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

std::unique_ptr<Transport> make_nccl_transport(const Communicator& comm) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
  // Every rank must agree, or some would set up NCCL alone.
  int64_t all_have = -comm.allreduce_max(static_cast<int64_t>(devices > 0 ? 0 : 1)) + 1;
  if (all_have == 0) return nullptr;
  return std::make_unique<NcclTransport>(comm);
}

}  // namespace shardload
#endif  // SHARDLOAD_WITH_NCCL
