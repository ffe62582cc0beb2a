// MPI in a Python process: `python3 train.py` under mpirun, whether mpi4py started MPI or not.
#pragma once

#include <mpi.h>

#include <cstdint>

namespace shardload::python {

/// Starts MPI (MPI_Init_thread asking for MPI_THREAD_MULTIPLE, as mpi4py does) unless someone
/// (mpi4py, another library) already did. Returns true when this call started it; the module then
/// finalises it at interpreter exit. Throws CommError when MPI was already finalised.
/// Collective in MPI's sense: every process of the job calls it before its first save or load.
/// MPI_Init waits for every process of the job: when it has not returned within
/// `timeout_seconds` (> 0; the caller's timeout), this process prints that it did not get past
/// MPI_Init (naming its rank and host, and the ranks and hosts its launcher has no word from)
/// and exits with status 3, as the command line does: a rank
/// that never starts MPI would otherwise hold the others there forever, outside any deadline.
bool ensure_mpi(double timeout_seconds = 0);

/// At interpreter exit: MPI_Finalize, only when ensure_mpi() started MPI and it is not finalised
/// yet. After a shardload timeout in this process (note_timeout), whoever started MPI (this
/// module or mpi4py), the job ends with MPI_Abort instead: a collective was left pending, and a
/// rank may be stuck in it, so MPI_Finalize could wait forever.
void finalize_mpi_if_ours();

/// Records that a shardload call of this process ended in a TimeoutError.
void note_timeout();

/// The communicator of a Fortran handle (mpi4py's `comm.py2f()`); `kWorld` for MPI_COMM_WORLD.
MPI_Comm communicator_of(int64_t fortran_handle);
constexpr int64_t kWorld = -1;

}  // namespace shardload::python
