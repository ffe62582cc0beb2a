// A run directory, as training jobs restart from it (Megatron's latest_checkpointed_iteration.txt,
// DeepSpeed's `latest`): ROOT/step-N checkpoints and ROOT/latest, a small text file naming the
// newest complete one ("step-N"), replaced atomically once that checkpoint is committed.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardload {

/// Name of the file in a run directory that names its newest complete checkpoint.
inline constexpr const char* kLatestName = "latest";

/// "step-N": the checkpoint directory of step N in a run directory.
std::string step_dir_name(int64_t step);

/// Makes `root` ready for a save of step `step` and returns ROOT/step-N: creates `root` when it
/// is missing (its parent must exist). Throws UsageError naming `root` when the step is negative
/// or `root` is a file or itself a checkpoint.
std::string prepare_run_dir(const std::string& root, int64_t step);

/// After ROOT/step-N has been committed: replaces ROOT/latest with "step-N" atomically (temporary,
/// fsync, rename, fsync of ROOT), removes what dead saves of other steps left in ROOT (restoring
/// an interrupted replacement first), and when `keep_last` > 0 removes all step-M checkpoints but
/// the `keep_last` highest M, never the one `latest` names (each is renamed out of sight before
/// it is deleted, so that no half-deleted checkpoint is ever visible). Returns notes on what was
/// removed.
std::vector<std::string> publish_step(const std::string& root, int64_t step, int keep_last);

/// Where a checkpoint path leads.
struct ResolvedCheckpoint {
  std::string path;                ///< the checkpoint directory to read
  std::vector<std::string> notes;  ///< what was done on the way (a checkpoint restored)
};

/// Resolves `path` for reading. A checkpoint directory is itself; a run directory (no
/// manifest.h5, but a `latest` file) leads to the checkpoint ROOT/latest names. Where a killed
/// save left no checkpoint at the path but a complete one beside it (a replacement without
/// RENAME_EXCHANGE), that one is put back first and a note says so. A `latest` that is empty,
/// not "step-N", or names a missing or incomplete checkpoint is a FormatError naming ROOT/latest
/// and what it says: never a silent fallback to another step. Not collective.
ResolvedCheckpoint resolve_checkpoint(const std::string& path);

}  // namespace shardload
