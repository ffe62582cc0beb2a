#include <algorithm>
#include <limits>

#include "core/error.h"
#include "transport/communicator.h"
#include "transport/transport.h"

namespace shardload {
namespace {

/// Largest part of one MPI call (MPI counts are int).
constexpr size_t kMaxPart = size_t{1} << 30;
/// Tag of point-to-point deliveries; MPI's non-overtaking order between a pair keeps them
/// matched in plan order.
constexpr int kTag = 7301;

class MpiDelivery : public Delivery {
 public:
  explicit MpiDelivery(std::vector<MPI_Request> requests) : requests_(std::move(requests)) {}
  ~MpiDelivery() override {
    if (!requests_.empty()) {
      MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
    }
  }
  void wait() override {
    if (requests_.empty()) return;
    std::vector<MPI_Request> reqs = std::move(requests_);
    requests_.clear();
    SHARDLOAD_MPI(MPI_Waitall(static_cast<int>(reqs.size()), reqs.data(), MPI_STATUSES_IGNORE));
  }

 private:
  std::vector<MPI_Request> requests_;
};

class MpiTransport : public Transport {
 public:
  explicit MpiTransport(const Communicator& comm)
      : comm_(comm.handle()), size_(comm.size()), rank_(comm.rank()) {}
  std::string name() const override { return "mpi"; }
  bool supports(MemoryKind kind) const override { return kind == MemoryKind::kHost; }

  std::unique_ptr<Delivery> start(void* data, size_t nbytes, int root,
                                  std::span<const int> ranks) override {
    std::vector<MPI_Request> reqs;
    auto* bytes = static_cast<char*>(data);
    bool everyone = static_cast<int>(ranks.size()) == size_;
    for (size_t pos = 0; pos < nbytes || (nbytes == 0 && pos == 0); pos += kMaxPart) {
      int n = static_cast<int>(std::min(kMaxPart, nbytes - pos));
      if (n == 0) break;
      if (everyone) {
        reqs.emplace_back();
        SHARDLOAD_MPI(MPI_Ibcast(bytes + pos, n, MPI_BYTE, root, comm_, &reqs.back()));
      } else if (rank_ == root) {
        for (int r : ranks) {
          if (r == root) continue;
          reqs.emplace_back();
          SHARDLOAD_MPI(MPI_Isend(bytes + pos, n, MPI_BYTE, r, kTag, comm_, &reqs.back()));
        }
      } else {
        reqs.emplace_back();
        SHARDLOAD_MPI(MPI_Irecv(bytes + pos, n, MPI_BYTE, root, kTag, comm_, &reqs.back()));
      }
    }
    return std::make_unique<MpiDelivery>(std::move(reqs));
  }

 private:
  MPI_Comm comm_;
  int size_;
  int rank_;
};

}  // namespace

std::unique_ptr<Transport> make_mpi_transport(const Communicator& comm) {
  return std::make_unique<MpiTransport>(comm);
}

}  // namespace shardload
