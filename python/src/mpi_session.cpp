#include "python/src/mpi_session.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "transport/communicator.h"
#include "transport/job_end.h"

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
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  std::thread watchdog;
  if (timeout_seconds > 0) {
    watchdog = std::thread([&] {
      std::unique_lock<std::mutex> lock(mutex);
      if (done_cv.wait_for(lock, std::chrono::duration<double>(timeout_seconds),
                           [&] { return done; })) {
        return;
      }
      const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");
      const char* size = std::getenv("OMPI_COMM_WORLD_SIZE");
      char host[256] = {};
      if (::gethostname(host, sizeof host - 1) != 0) host[0] = '?';
      std::fprintf(stderr,
                   "shardload: error: rank %s of %s (host %s) did not get past MPI_Init within "
                   "%g s: another rank is stuck or gone, or never called shardload (each rank that "
                   "got there prints this line; the ranks missing from these lines are the stuck "
                   "ones)\n",
                   rank ? rank : "?", size ? size : "?", host, timeout_seconds);
      std::fflush(stderr);
      end_launcher_after(20);
      std::_Exit(3);
    });
  }
  int provided = 0;
  const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  if (watchdog.joinable()) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      done = true;
    }
    done_cv.notify_all();
    watchdog.join();
  }
  SHARDLOAD_MPI(rc);
  started_here = true;
  return true;
}

void note_timeout() { timed_out = true; }

void finalize_mpi_if_ours() {
  if (timed_out) {
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
