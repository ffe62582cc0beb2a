// main() of the multi-rank tests: MPI is initialised and finalised here only; rank 0 prints
// the report; the process fails when any rank's tests failed.
#include <gtest/gtest.h>
#include <mpi.h>

int main(int argc, char** argv) {
  int provided = 0;
  // The load's reader threads make no MPI calls; the device double's stream thread does (as
  // NCCL's proxy threads move bytes beside the caller's thread): MPI_THREAD_MULTIPLE.
  MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
  ::testing::InitGoogleTest(&argc, argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    // Other ranks report failures only (with their rank), not the whole log.
    delete listeners.Release(listeners.default_result_printer());
  }
  int failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  int any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (any && rank == 0) std::fprintf(stderr, "some rank's tests failed\n");
  MPI_Finalize();
  return any;
}
