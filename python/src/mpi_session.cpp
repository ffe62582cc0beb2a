#include "python/src/mpi_session.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include "core/error.h"
#include "loader/async_save.h"
#include "transport/communicator.h"
#include "transport/job_end.h"
#include "transport/launcher.h"

namespace shardload::python {
namespace {

bool started_here = false;
std::atomic<bool> timed_out{false};

/// After a timeout a collective is left pending (a rank may be stuck in it), so MPI_Finalize
/// could wait forever or fail: end the job instead.
[[noreturn]] void abort_after_timeout() {
  int rank = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  std::fprintf(stderr,
               "shardload: rank %d: exiting after a shardload timeout; MPI_Finalize cannot "
               "complete with a collective left pending, so the job ends with MPI_Abort\n",
               rank);
  std::fflush(stderr);
  end_launcher_after(20);
  std::thread([] {  // MPI_Abort may wait for an unreachable node: end this process anyway
    std::this_thread::sleep_for(std::chrono::seconds(10));
    std::_Exit(3);
  })
      .detach();
  MPI_Abort(MPI_COMM_WORLD, 3);
  std::_Exit(3);
}

}  // namespace

bool ensure_mpi(double timeout_seconds) {
  int initialized = 0, finalized = 0;
  SHARDLOAD_MPI(MPI_Initialized(&initialized));
  SHARDLOAD_MPI(MPI_Finalized(&finalized));
  if (finalized) throw CommError("shardload: MPI has already been finalized in this process");
  if (initialized) return false;
  int rc = MPI_SUCCESS;
  // MPI_Init waits for every process of the job: after the deadline the ranks that got there
  // name the ones the launcher has no word from and leave (transport/launcher.h).
  run_job_step_watched(
      "MPI_Init", timeout_seconds,
      [&] {
        int provided = 0;
        rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
      },
      "it has not called shardload, is stuck or gone, or its host is unreachable");
  SHARDLOAD_MPI(rc);
  started_here = true;
  return true;
}

void note_timeout() { timed_out = true; }

void finalize_mpi_if_ours() {
  if (timed_out || an_async_save_timed_out()) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) abort_after_timeout();
  }
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
