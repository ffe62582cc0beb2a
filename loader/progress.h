// Progress of long collective work (loads, saves, conversions), reported to a caller's callback.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace shardload {

/// A snapshot of a running operation, as seen by this rank.
struct Progress {
  std::string operation;    ///< "load", "save", "convert"
  std::string phase;        ///< the phase in progress ("transfer", "write", ...)
  int64_t bytes_done = 0;   ///< bytes this operation has moved so far (all ranks where known)
  int64_t bytes_total = 0;  ///< bytes it will move in all; 0 while unknown
  double seconds = 0;       ///< since the operation started
  bool finished = false;    ///< the last report of the operation
};

/// Called on the rank that runs the operation, from the thread that called it, at most a few
/// times per second and once with `finished` set. It must not call shardload collectives.
using ProgressCallback = std::function<void(const Progress&)>;

}  // namespace shardload
