// What the launcher knows of the job before MPI does. MPI_Init and MPI_Finalize wait for every
// rank of the job, outside any deadline of shardload, and before MPI_Init returns no rank can ask
// another anything over MPI. The launcher (mpirun, srun, prterun) can: through PMIx it tells each
// process the host of every rank, and whether a rank has started (a key each rank puts before
// MPI_Init, fetched from the rank's own node on demand). So a rank whose MPI_Init does not return
// names the ranks and hosts it has no word from: on either side of a cut link, the other side.
// Without PMIx (a singleton, another launcher) the messages name only this rank.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace shardload {

/// The host of each world rank as the launcher placed it ("" where not known; empty without
/// PMIx). Asked of the launcher's local daemon once per process, then kept. Not collective.
const std::vector<std::string>& launcher_hosts();

/// Runs `body` (MPI_Init or MPI_Finalize: `what`) with a deadline of `timeout` seconds (<= 0:
/// none). When `body` has not returned by then, this rank prints one line on stderr naming itself
/// and the ranks (with their hosts) the launcher has no word from within a few seconds more, calls
/// end_launcher_after(20) and exits with status 3: every rank that got there does the same, so
/// mpirun ends the job. `absent` says what a rank the launcher has no word from may be doing
/// ("stuck before it, gone, or unreachable"). Before MPI_Init, this rank tells the launcher that it
/// has started. Not collective (every rank calls it at the same step).
void run_job_step_watched(const char* what, double timeout, const std::function<void()>& body,
                          const char* absent);

/// "rank 1 (host h2)", "ranks 2, 3 (host h2) and 5 (host h3)": grouped by host in the order of
/// first appearance; hosts that are not known ("") are left out.
std::string ranks_phrase(const std::vector<int>& ranks, const std::vector<std::string>& hosts);

}  // namespace shardload
