#include "transport/communicator.h"

#include <limits>
#include <numeric>

#include "core/error.h"

namespace shardload {

void check_mpi(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, text, &len);
  throw CommError(std::string(what) + " failed: " + std::string(text, static_cast<size_t>(len)));
}

Communicator::Communicator(MPI_Comm comm) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) throw UsageError("MPI is not initialized: call MPI_Init in main()");
  SHARDLOAD_MPI(MPI_Comm_dup(comm, &comm_));
  SHARDLOAD_MPI(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN));
  SHARDLOAD_MPI(MPI_Comm_rank(comm_, &rank_));
  SHARDLOAD_MPI(MPI_Comm_size(comm_, &size_));
}

Communicator::~Communicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

std::vector<std::string> Communicator::allgather(const std::string& mine) const {
  if (mine.size() > static_cast<size_t>(std::numeric_limits<int>::max())) {
    throw CommError("allgather: a rank's contribution exceeds 2 GiB");
  }
  int n = static_cast<int>(mine.size());
  std::vector<int> counts(static_cast<size_t>(size_));
  SHARDLOAD_MPI(MPI_Allgather(&n, 1, MPI_INT, counts.data(), 1, MPI_INT, comm_));
  std::vector<int> displs(counts.size());
  int64_t total = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (total > std::numeric_limits<int>::max()) throw CommError("allgather: more than 2 GiB");
    displs[i] = static_cast<int>(total);
    total += counts[i];
  }
  if (total > std::numeric_limits<int>::max()) throw CommError("allgather: more than 2 GiB");
  std::string all(static_cast<size_t>(total), '\0');
  SHARDLOAD_MPI(MPI_Allgatherv(mine.data(), n, MPI_BYTE, all.data(), counts.data(), displs.data(),
                               MPI_BYTE, comm_));
  std::vector<std::string> out(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) {
    out[i] = all.substr(static_cast<size_t>(displs[i]), static_cast<size_t>(counts[i]));
  }
  return out;
}

std::vector<int64_t> Communicator::allgather(int64_t mine) const {
  std::vector<int64_t> out(static_cast<size_t>(size_));
  SHARDLOAD_MPI(MPI_Allgather(&mine, 1, MPI_INT64_T, out.data(), 1, MPI_INT64_T, comm_));
  return out;
}

int64_t Communicator::allreduce_sum(int64_t value) const {
  int64_t out = 0;
  SHARDLOAD_MPI(MPI_Allreduce(&value, &out, 1, MPI_INT64_T, MPI_SUM, comm_));
  return out;
}

int64_t Communicator::allreduce_max(int64_t value) const {
  int64_t out = 0;
  SHARDLOAD_MPI(MPI_Allreduce(&value, &out, 1, MPI_INT64_T, MPI_MAX, comm_));
  return out;
}

double Communicator::allreduce_max(double value) const {
  double out = 0;
  SHARDLOAD_MPI(MPI_Allreduce(&value, &out, 1, MPI_DOUBLE, MPI_MAX, comm_));
  return out;
}

void Communicator::broadcast(std::string& bytes, int root) const {
  int64_t n = static_cast<int64_t>(bytes.size());
  SHARDLOAD_MPI(MPI_Bcast(&n, 1, MPI_INT64_T, root, comm_));
  if (n > std::numeric_limits<int>::max()) throw CommError("broadcast: more than 2 GiB");
  bytes.resize(static_cast<size_t>(n));
  SHARDLOAD_MPI(MPI_Bcast(bytes.data(), static_cast<int>(n), MPI_BYTE, root, comm_));
}

void Communicator::barrier() const { SHARDLOAD_MPI(MPI_Barrier(comm_)); }

}  // namespace shardload
