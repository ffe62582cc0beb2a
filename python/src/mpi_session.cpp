#include "python/src/mpi_session.h"

#include "core/error.h"
#include "transport/communicator.h"

namespace shardload::python {
namespace {

bool started_here = false;

}  // namespace

bool ensure_mpi() {
  int initialized = 0, finalized = 0;
  SHARDLOAD_MPI(MPI_Initialized(&initialized));
  SHARDLOAD_MPI(MPI_Finalized(&finalized));
  if (finalized) throw CommError("shardload: MPI has already been finalized in this process");
  if (initialized) return false;
  int provided = 0;
  SHARDLOAD_MPI(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided));
  started_here = true;
  return true;
}

void finalize_mpi_if_ours() {
  if (!started_here) return;
  int finalized = 0;
  if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) MPI_Finalize();
  started_here = false;
}

MPI_Comm communicator_of(int64_t fortran_handle) {
  if (fortran_handle == kWorld) return MPI_COMM_WORLD;
  MPI_Comm comm = MPI_Comm_f2c(static_cast<MPI_Fint>(fortran_handle));
  if (comm == MPI_COMM_NULL || comm == MPI_Comm{}) {
    throw UsageError("shardload: comm is MPI.COMM_NULL (or not a communicator)");
  }
  return comm;
}

}  // namespace shardload::python
