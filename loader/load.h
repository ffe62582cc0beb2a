// The collective load (DESIGN.md §1) and its verdict (§6).
#pragma once

#include <mpi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "loader/load_options.h"
#include "loader/partition.h"

namespace shardload {

/// Loads the checkpoint at `path` into every rank's partition, in place. `path` may be a run
/// directory: the checkpoint its `latest` names is loaded (SaveOptions::step); a Hugging Face
/// directory (model.safetensors.index.json and its shards, or one model.safetensors), a
/// .safetensors file or a torch.save file (LoadOptions::select), read in place with the same
/// plan (io/checkpoint_source.h): file i is opened and indexed by rank i mod P.
/// Collective: every rank of `comm` calls it with the same path and options. The verdict is
/// decided before any tensor byte is read: when it fails, every rank throws LoadVerdictError
/// with the same message and no tensor has changed. Any other failure on any rank (missing or
/// unreadable shard file, bad index, allocation, a corrupt chunk) is thrown on every rank,
/// naming the rank, file and key.
LoadResult load(Partition& partition, const std::string& path, MPI_Comm comm,
                const LoadOptions& options = {});

/// load() into a module's parameters and buffers (PyTorch's key names); `rules` declare which
/// of the module's tensors are local slabs of split tensors. Collective, like load().
LoadResult load(torch::nn::Module& module, const std::string& path, MPI_Comm comm,
                const LoadOptions& options = {}, const std::vector<SplitRule>& rules = {});

}  // namespace shardload
