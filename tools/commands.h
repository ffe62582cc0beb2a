// The subcommands of the `shardload` command line (DESIGN.md §5).
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "core/error.h"

namespace shardload::tools {

/// A subcommand's runner: returns the process exit code. Collective subcommands are run by
/// every rank; local ones (convert, inspect, verify) by rank 0 only.
using Runner = std::function<int()>;

Runner add_convert(CLI::App& app);
Runner add_inspect(CLI::App& app);
Runner add_verify(CLI::App& app);
Runner add_load(CLI::App& app);
Runner add_diff(CLI::App& app);
Runner add_demo(CLI::App& app);

/// Rank of this process in MPI_COMM_WORLD.
int world_rank();

/// Prints a timeout (once per job where possible) and ends the job with MPI_Abort: after a
/// timeout a rank may be stuck in a collective, so the processes cannot finalize normally.
[[noreturn]] void end_job_after_timeout(const TimeoutError& e, const std::string& command);

/// Tells the user what shardload did on its own (a checkpoint restored, leftovers of dead saves
/// removed): one "shardload: note: ..." line on stderr each (docs/GUARANTEES.md).
inline void print_notes(const std::vector<std::string>& notes) {
  for (const auto& n : notes) std::cerr << "shardload: note: " << n << "\n";
}

}  // namespace shardload::tools
