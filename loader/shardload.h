// shardload's public API in one include: save and load LibTorch state across the ranks of an
// MPI job as a sharded HDF5 checkpoint.
#pragma once

#include "core/error.h"              // IWYU pragma: export
#include "core/value.h"              // IWYU pragma: export
#include "io/tensor_file.h"          // IWYU pragma: export
#include "loader/async_save.h"       // IWYU pragma: export
#include "loader/checkpoint_info.h"  // IWYU pragma: export
#include "loader/load.h"             // IWYU pragma: export
#include "loader/partition.h"        // IWYU pragma: export
#include "loader/save.h"             // IWYU pragma: export
#include "loader/training_state.h"   // IWYU pragma: export
