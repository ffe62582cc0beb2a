// Crash points for the crash-safety tests: SHARDLOAD_CRASH_AT=<point>[:<rank>] makes the process
// that reaches that named point of a save kill itself with SIGKILL, like a node that dies there;
// SHARDLOAD_STOP_AT=<point>[:<rank>] stops it there (SIGSTOP) until the test sends SIGCONT, like
// a node stuck on its filesystem, so that a test can act while a save is live at that point.
#pragma once

namespace shardload {

/// Raises SIGKILL on this process when the environment variable SHARDLOAD_CRASH_AT names
/// `point` and, when it gives a rank ("<point>:<rank>"), that rank is `rank`; SIGSTOP likewise
/// for SHARDLOAD_STOP_AT. `rank` < 0 means
/// this process's rank in the launcher's world (OMPI_COMM_WORLD_RANK, PMIX_RANK; 0 without a
/// launcher). The variables are read once per process; when unset a call costs two branches.
/// Points of a save, in order (docs/GUARANTEES.md): staged, shard-written (rank = shard
/// number), manifest-written, before-commit, journal-written, between-renames, renamed,
/// old-removed, committed, latest-written.
void crash_point(const char* point, int rank = -1);

}  // namespace shardload
