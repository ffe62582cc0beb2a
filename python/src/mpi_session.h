// MPI in a Python process: `python3 train.py` under mpirun, whether mpi4py started MPI or not.
#pragma once

#include <mpi.h>

#include <cstdint>

namespace shardload::python {

/// Starts MPI (MPI_Init_thread asking for MPI_THREAD_MULTIPLE, as mpi4py does) unless someone
/// (mpi4py, another library) already did. Returns true when this call started it; the module then
/// finalises it at interpreter exit. Throws CommError when MPI was already finalised.
/// Collective in MPI's sense: every process of the job calls it before its first save or load.
bool ensure_mpi();

/// MPI_Finalize, only when ensure_mpi() started MPI and it is not finalised yet (atexit).
void finalize_mpi_if_ours();

/// The communicator of a Fortran handle (mpi4py's `comm.py2f()`); `kWorld` for MPI_COMM_WORLD.
MPI_Comm communicator_of(int64_t fortran_handle);
constexpr int64_t kWorld = -1;

}  // namespace shardload::python
