// The checkpoint a collective load reads: a run directory's `latest` resolved, and a checkpoint
// that a killed save left beside its path put back, once, by rank 0.
#pragma once

#include <string>

#include "io/commit/run_dir.h"
#include "transport/communicator.h"

namespace shardload {

/// resolve_checkpoint(path) (io/commit/run_dir.h) on rank 0, shared with every rank: all ranks
/// return the same path and notes, or throw the same error (a torn `latest` is a FormatError naming
/// ROOT/latest and what it says).
/// Collective: every rank of `comm` calls it with the same path.
ResolvedCheckpoint resolve_checkpoint(const std::string& path, const Communicator& comm);

/// Replaces `resolved` on every rank with rank 0's (path and notes).
/// Collective: every rank of `comm` calls it.
void share_from_rank0(ResolvedCheckpoint& resolved, const Communicator& comm);

}  // namespace shardload
