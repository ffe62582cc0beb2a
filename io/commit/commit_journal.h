// The commit journal of a replacement without RENAME_EXCHANGE (NFS, Lustre, FUSE), and what the
// next save or reader does with what a killed save left beside a checkpoint PARENT/NAME:
// restore a complete checkpoint when the path has none, remove the rest (docs/GUARANTEES.md).
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace shardload {

/// What `.NAME.commit` names: written (flushed) before the first of the two renames of a
/// replacement, removed after the last.
struct CommitJournal {
  std::string staging;  ///< basename of the staging directory: the new checkpoint
  std::string aside;    ///< basename the previous checkpoint is moved to (staging + ".old")
  std::string owner;    ///< who commits: "pid N on host H, since T"
};

/// `PARENT/.NAME.commit`.
std::string commit_journal_path(const std::string& path);

/// Writes the journal of `path` atomically (temporary, fsync, rename, fsync of the directory).
/// Throws FormatError naming it.
void write_commit_journal(const std::string& path, const CommitJournal& journal);

/// The journal of `path`, when there is one and it is well formed. It is untrusted input: its
/// names are used only when they are this path's staging and aside names, nothing else.
std::optional<CommitJournal> read_commit_journal(const std::string& path);

/// Puts back a complete checkpoint at `path` when a killed save left none there: the new one
/// from its staging directory when that holds a manifest, else the previous one from beside it.
/// The caller holds the save lock of `path` (so whatever a journal names belongs to a dead save).
/// Returns one note per action ("restored ..."), empty when there was nothing to do.
std::vector<std::string> restore_interrupted_commit(const std::string& path);

/// True when `path` holds no checkpoint but a killed save left one to restore beside it.
bool needs_restore(const std::string& path);

/// Removes what dead saves of `path` left beside it (staging and aside directories, journal
/// and lock temporaries). The caller holds the save lock of `path`. Returns a note per removal.
std::vector<std::string> remove_dead_leftovers(const std::string& path);

}  // namespace shardload
