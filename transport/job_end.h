// Ending an MPI job whose launcher cannot end it: after a timeout, a rank calls MPI_Abort, and
// mpirun then waits for the daemon of every node to confirm that its ranks are gone. A daemon
// behind a cut link never answers; mpirun learns that only when TCP gives up retransmitting
// (net.ipv4.tcp_retries2: about 15 minutes by default), so the job would outlive every deadline
// of shardload. docs/GUARANTEES.md ("Several hosts") has the measured times.
#pragma once

namespace shardload {

/// When this process's parent is the MPI launcher (mpirun, mpiexec, orterun or prterun: the
/// ranks on the launcher's own node), starts a detached watcher process that sends SIGKILL to
/// that launcher if it is still running `seconds` later (the same process: its start time is
/// checked), printing why on stderr. Reachable nodes' daemons then end their ranks when their
/// connection to the launcher closes. Returns whether a watcher was started. Not collective;
/// call it just before MPI_Abort. SHARDLOAD_END_LAUNCHER=0 in the environment turns it off.
bool end_launcher_after(double seconds);

}  // namespace shardload
