// `shardload`: one binary, one subcommand per task. Exit codes: 0 success, 1 verdict error,
// 2 usage error, 3 unreadable/corrupt/invalid checkpoint or input file.
#include <mpi.h>

#include <chrono>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <thread>

#include "core/error.h"
#include "tools/commands.h"
#include "transport/job_end.h"
#include "transport/launcher.h"

namespace {

/// What a rank that MPI_Init or MPI_Finalize waits for may be doing.
constexpr const char* kAbsent = "stuck or gone, or its host unreachable";

/// True when mpirun (or another PMIx launcher) started this process.
bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK");
}

/// The --timeout of the command line, read before MPI starts (default 600 s; 0: none).
double timeout_argument(int argc, char** argv) {
  double timeout = 600;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    try {
      if (a == "--timeout" && i + 1 < argc) timeout = std::stod(argv[i + 1]);
      if (a.rfind("--timeout=", 0) == 0) timeout = std::stod(a.substr(10));
    } catch (const std::exception&) {
      // CLI11 reports the bad value after start-up.
    }
  }
  return timeout;
}

}  // namespace

int main(int argc, char** argv) {
  // MPI is started for the collective subcommands, and for any under mpirun; a plain
  // `shardload inspect` skips the (slow) singleton start-up.
  bool mpi = launched_by_mpirun();
  for (int i = 1; i < argc && !mpi; ++i) {
    std::string a = argv[i];
    mpi = a == "load" || a == "demo";
  }
  const double timeout = timeout_argument(argc, argv);
  if (mpi) {
    // MPI_Init and MPI_Finalize wait for every rank of the job, outside shardload's deadlines:
    // a rank that never starts or ends (or stops on a dead node, or behind a cut link) would
    // hold the others there forever. After the timeout, the ranks that got there name the ones
    // the launcher has no word from and leave; mpirun then ends the job.
    shardload::run_job_step_watched(
        "MPI_Init", timeout,
        [&] {
          int provided = 0;
          // Only the main thread calls MPI; the load's reader threads do not.
          MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
        },
        kAbsent);
  }
  int rc = 0;
  {
    CLI::App app{
        "shardload: save and restore LibTorch models across the ranks of an mpirun job as a "
        "sharded HDF5 checkpoint"};
    app.require_subcommand(1);
    std::map<std::string, shardload::tools::Runner> runners;
    runners["demo"] = shardload::tools::add_demo(app);
    runners["convert"] = shardload::tools::add_convert(app);
    runners["inspect"] = shardload::tools::add_inspect(app);
    runners["verify"] = shardload::tools::add_verify(app);
    runners["load"] = shardload::tools::add_load(app);
    runners["diff"] = shardload::tools::add_diff(app);
    bool parsed = false;
    try {
      app.parse(argc, argv);
      parsed = true;
    } catch (const CLI::ParseError& e) {
      int code = app.exit(e);  // prints help or the usage error
      rc = code == 0 ? 0 : 2;
    }
    if (parsed) {
      const std::string name = app.get_subcommands().front()->get_name();
      try {
        rc = runners.at(name)();
      } catch (const shardload::TimeoutError& e) {
        shardload::tools::end_job_after_timeout(e, name);
      } catch (const shardload::Error& e) {
        if (shardload::tools::world_rank() == 0) {
          std::cerr << "shardload " << name << ": error: " << e.what() << "\n";
        }
        rc = e.exit_code();
      } catch (const std::exception& e) {
        if (shardload::tools::world_rank() == 0) {
          std::cerr << "shardload " << name << ": error: " << e.what() << "\n";
        }
        rc = 3;
      }
    }
  }
  if (mpi)
    shardload::run_job_step_watched(
        "MPI_Finalize", timeout, [] { MPI_Finalize(); }, kAbsent);
  return rc;
}

void shardload::tools::end_job_after_timeout(const TimeoutError& e, const std::string& command) {
  // A rank may be stuck inside a collective, so MPI_Finalize would wait forever: the rank that
  // holds the census prints the error and ends the job; the others give it a moment to do so
  // and end the job themselves when it does not (it may be the one that is stuck).
  if (!e.reporter()) std::this_thread::sleep_for(std::chrono::seconds(3));
  std::cerr << "shardload " << command << ": error: " << e.what() << std::endl;
  // MPI_Abort asks mpirun to end the job; over a cut link mpirun may wait for the unreachable
  // node's daemon until TCP gives up (transport/job_end.h), and this process must end all the
  // same.
  const int code = e.exit_code();
  shardload::end_launcher_after(20);
  std::thread([code] {
    std::this_thread::sleep_for(std::chrono::seconds(10));
    std::_Exit(code);
  }).detach();
  MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

int shardload::tools::world_rank() {
  int initialized = 0, rank = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}
