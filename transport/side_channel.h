// The communicators of background work (an asynchronous save): made once per caller's
// communicator, in the caller's thread, so that nothing running beside the caller's own
// collectives ever issues one on the caller's communicator (DESIGN.md §8, "One pipeline").
#pragma once

#include <mpi.h>

#include <functional>
#include <memory>

#include "transport/communicator.h"

namespace shardload {

/// What a caller's communicator's background work uses.
struct SideChannel {
  /// The caller's thread's agreements about background work (a private duplicate of the
  /// caller's communicator, with deadlines). Only the caller's thread uses it.
  std::unique_ptr<Communicator> control;
  /// The background thread's own communicator (a duplicate of `control`'s). Only the background
  /// thread uses it, one collective operation at a time.
  MPI_Comm background = MPI_COMM_NULL;
};

/// The side channel of `comm`: made at the first call for that communicator (collective over
/// `comm`, under `timeout_seconds`: every rank calls it at the same point) and then cached on it
/// as an MPI attribute, so that a communicator freed and another made at the same address never
/// share one. Freeing `comm` first runs the hook of on_side_channel_freed(), then frees the
/// side channel. Call from the caller's thread.
SideChannel& side_channel(MPI_Comm comm, double timeout_seconds);

/// `hook` runs (once, on the thread that calls MPI_Finalize) when MPI_Finalize starts, while
/// MPI still works, and when a communicator with a side channel is freed: background work
/// finishes there instead of dying with MPI. Not collective. The latest hook wins.
void on_side_channel_end(std::function<void()> hook);

/// Whether the calling process started MPI with MPI_THREAD_MULTIPLE (background work calls MPI
/// beside the caller's thread, which needs it).
bool mpi_thread_multiple();

}  // namespace shardload
