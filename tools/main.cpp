// `shardload`: one binary, one subcommand per task. Exit codes: 0 success, 1 verdict error,
// 2 usage error, 3 unreadable/corrupt/invalid checkpoint or input file.
#include <mpi.h>

#include <cstdlib>
#include <iostream>
#include <map>
#include <string>

#include "core/error.h"
#include "tools/commands.h"

namespace {

/// True when mpirun (or another PMIx launcher) started this process.
bool launched_by_mpirun() {
  return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK");
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
  if (mpi) MPI_Init(&argc, &argv);
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
  if (mpi) MPI_Finalize();
  return rc;
}

int shardload::tools::world_rank() {
  int initialized = 0, rank = 0;
  MPI_Initialized(&initialized);
  if (initialized) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}
