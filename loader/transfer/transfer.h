// Phase 5 of the load (DESIGN.md §1): the transfer pipeline, as named stages in this folder:
//   read    (read.h, on reader threads): a message's pieces from the shard files into one
//           staging buffer (or straight into the reader's tensor), every byte verified;
//   route   (route.h): how each message moves, decided from the plan alone, the same on every
//           rank of it: read and land here, MPI in one or two steps, or the device transport;
//   deliver (deliver.h): the status word and the bytes from the reader to the other receivers
//           (MPI for host memory, a device transport — NCCL — for device memory);
//   land    (land.h): each receiver's pieces into its tensors, converting dtype like copy_.
// Each message carries its state (message.h); the driver (transfer.cpp) moves every message of
// this rank forward in plan order. Reads of later messages overlap deliveries and landings of
// earlier ones, within a fixed staging budget (staging_arena.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/chunk_record.h"
#include "core/error.h"
#include "loader/collective.h"
#include "loader/partition.h"
#include "loader/progress.h"
#include "loader/shard_files.h"
#include "sharding/load_plan.h"
#include "transport/communicator.h"

namespace shardload {

/// How the transfer runs (the load's options that concern it; the same on every rank).
struct TransferOptions {
  int64_t message_bytes = 8ll << 20;   ///< the plan's largest message
  int64_t staging_bytes = 64ll << 20;  ///< host staging in flight on one rank
  bool verify_checksums = true;
  int reader_threads = 0;  ///< 0: the node's cores shared by its ranks (1..8)
  ProgressCallback progress;
  /// LoadOptions::read_in_place.
  bool read_in_place = false;
};

/// What the transfer works from: the plan and index every rank holds identically, and this
/// rank's side (its needs, the partition entry each need lands in, its open shard files).
struct TransferInputs {
  const LoadPlan& plan;
  const std::vector<ChunkRecord>& index;
  const std::vector<Need>& my_needs;
  const std::vector<int32_t>& my_entry_of_need;
  Partition& partition;
  ShardFiles& files;
  TransferOptions options;
  const Communicator& comm;
};

/// This rank's outcome of the streaming part.
struct TransferOutcome {
  int64_t bytes_read = 0;               ///< bytes this rank read from the shard files
  int64_t bytes_landed = 0;             ///< bytes written into this rank's tensors
  ErrorKind failed = ErrorKind::kNone;  ///< the first failure on this rank (kNone: none)
  std::string error;
  std::string transport = "mpi";  ///< the backend that moved the bytes ("mpi", "nccl", ...)
  std::string transport_note;     ///< why device destinations did not go by it ("" otherwise)
  int64_t device_messages = 0;    ///< messages of this rank that went the device route
  int64_t staging_peak = 0;       ///< most host staging bytes this rank held at once
};

/// The transfer of one load.
class Transfer {
 public:
  /// Set-up: everything that can fail on one rank alone (the staging arena, opening the shard
  /// files this rank reads). Not collective: make it inside a PhaseRunner phase.
  explicit Transfer(const TransferInputs& in);
  ~Transfer();
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;

  /// Sets up the transports and decides which messages go the device route. Collective over
  /// `in.comm`: every rank calls it after a successful set-up phase, before run(). A failure on
  /// one rank (a device that cannot be set up) is reduced through `phases`: the same error on
  /// every rank.
  void connect(PhaseRunner& phases);

  /// The streaming part: runs every message of this rank to the end of the plan, in plan order,
  /// on every rank. A failed read does not stop it: the reader flags the message (its receivers
  /// skip it) and the failure is returned, for the caller to reduce. Throws only TimeoutError
  /// (a peer made no progress within the timeout) or CommError (a transport failed here or on
  /// a peer, which announces it: every rank throws the same message), after which the
  /// communicator is unusable.
  TransferOutcome run();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace shardload
