#include <algorithm>
#include <deque>
#include <limits>
#include <string>

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
/// Tag of failure notices (announce_failure).
constexpr int kFailureTag = 7302;

class MpiDelivery : public Delivery {
 public:
  explicit MpiDelivery(std::vector<MPI_Request> requests) : requests_(std::move(requests)) {}
  // Never blocks: an unfinished delivery is abandoned (see Delivery). Its requests are left to
  // MPI (requests of non-blocking collectives may not be freed), and the job is ending.
  ~MpiDelivery() override = default;
  bool test() override {
    if (requests_.empty()) return true;
    int done = 0;
    SHARDLOAD_MPI(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done,
                              MPI_STATUSES_IGNORE));
    if (done) requests_.clear();
    return done != 0;
  }
  void wait() override {
    if (requests_.empty()) return;
    SHARDLOAD_MPI(
        MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE));
    requests_.clear();
  }

 private:
  std::vector<MPI_Request> requests_;
};

class MpiTransport : public Transport {
 public:
  explicit MpiTransport(const Communicator& comm)
      : comm_(comm.duplicate()), size_(comm.size()), rank_(comm.rank()) {}
  ~MpiTransport() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    // After abort() operations may still be pending on the communicator: it is never freed, so
    // that a later duplicate cannot get its context and match what was left unmatched.
    if (!finalized && !aborted_ && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
  }
  void abort() override { aborted_ = true; }
  std::string name() const override { return "mpi"; }
  bool supports(MemoryKind kind) const override { return kind == MemoryKind::kHost; }

  std::unique_ptr<Delivery> start(void* data, size_t nbytes, int root,
                                  std::span<const int> ranks) override {
    std::vector<MPI_Request> reqs;
    auto* bytes = static_cast<char*>(data);
    bool everyone = static_cast<int>(ranks.size()) == size_;
    for (size_t pos = 0; pos < nbytes; pos += kMaxPart) {
      int n = static_cast<int>(std::min(kMaxPart, nbytes - pos));
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

  void announce_failure(const std::string& message) override {
    // The notices outlive this call (and this transport: the job is failing); never waited on.
    static std::deque<std::string> kept;
    kept.push_back(message);
    const std::string& text = kept.back();
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Request req;
      if (MPI_Isend(text.data(), static_cast<int>(text.size()), MPI_CHAR, r, kFailureTag, comm_,
                    &req) == MPI_SUCCESS) {
        MPI_Request_free(&req);
      }
    }
  }

  std::string announced_failure() override {
    int flag = 0;
    MPI_Status st;
    SHARDLOAD_MPI(MPI_Iprobe(MPI_ANY_SOURCE, kFailureTag, comm_, &flag, &st));
    if (!flag) return "";
    int count = 0;
    MPI_Get_count(&st, MPI_CHAR, &count);
    std::string text(static_cast<size_t>(std::max(count, 0)), '\0');
    SHARDLOAD_MPI(MPI_Recv(text.data(), count, MPI_CHAR, st.MPI_SOURCE, kFailureTag, comm_,
                           MPI_STATUS_IGNORE));
    return "rank " + std::to_string(st.MPI_SOURCE) + ": " + text;
  }

 private:
  MPI_Comm comm_;
  int size_;
  int rank_;
  bool aborted_ = false;
};

}  // namespace

std::unique_ptr<Transport> make_mpi_transport(const Communicator& comm) {
  return std::make_unique<MpiTransport>(comm);
}

}  // namespace shardload
