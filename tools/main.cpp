// `shardload`: one binary, one subcommand per task. Exit codes: 0 success, 1 verdict error,
// 2 usage error, 3 unreadable/corrupt/invalid checkpoint or input file.
#include <mpi.h>

#include <iostream>
#include <map>

#include "core/error.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
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
  MPI_Finalize();
  return rc;
}

int shardload::tools::world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}
