#include "loader/checkpoint_path.h"

#include "loader/collective.h"

namespace shardload {

ResolvedCheckpoint resolve_checkpoint(const std::string& path, const Communicator& comm) {
  ResolvedCheckpoint resolved;
  PhaseRunner phases(comm, "shardload::load(" + path + ")");
  phases.run("resolve", [&] {
    if (comm.rank() == 0) resolved = resolve_checkpoint(path);
  });
  share_from_rank0(resolved, comm);
  return resolved;
}

void share_from_rank0(ResolvedCheckpoint& resolved, const Communicator& comm) {
  // One broadcast: the path, then each note, NUL-separated (neither holds a NUL).
  std::string packed = resolved.path;
  for (const auto& note : resolved.notes) packed += '\0' + note;
  comm.broadcast(packed, 0);
  resolved = {};
  size_t start = 0;
  for (size_t i = 0; i <= packed.size(); ++i) {
    if (i < packed.size() && packed[i] != '\0') continue;
    std::string piece = packed.substr(start, i - start);
    if (start == 0) {
      resolved.path = std::move(piece);
    } else {
      resolved.notes.push_back(std::move(piece));
    }
    start = i + 1;
  }
}

}  // namespace shardload
