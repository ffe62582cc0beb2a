// The control plane between ranks: small collectives over MPI (index exchange, status
// reductions). Every MPI call of shardload lives in transport/.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

namespace shardload {

/// Throws CommError("<what> failed: <MPI error string>") when `rc` is not MPI_SUCCESS.
void check_mpi(int rc, const char* what);
#define SHARDLOAD_MPI(call) ::shardload::check_mpi((call), #call)

/// A private duplicate of the caller's communicator, with errors returned rather than fatal.
/// Collective: all ranks of `comm` construct it together, and call every method in the same
/// order (each method is one collective unless it says otherwise).
class Communicator {
 public:
  explicit Communicator(MPI_Comm comm);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  MPI_Comm handle() const { return comm_; }

  /// Every rank's bytes, indexed by rank (MPI_Allgatherv; sizes beyond 2 GiB in total are
  /// rejected with CommError).
  std::vector<std::string> allgather(const std::string& mine) const;
  /// Every rank's value, indexed by rank.
  std::vector<int64_t> allgather(int64_t mine) const;
  int64_t allreduce_sum(int64_t value) const;
  int64_t allreduce_max(int64_t value) const;
  double allreduce_max(double value) const;
  /// `root`'s bytes on every rank.
  void broadcast(std::string& bytes, int root) const;
  void barrier() const;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
};

}  // namespace shardload
