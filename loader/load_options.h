// The public types of a load: its options, its result and its verdict error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/value.h"
#include "io/tensor_file.h"
#include "loader/progress.h"
#include "sharding/load_plan.h"

namespace shardload {

/// The message size of a load whose tensors are all in host memory: a message is read, checked
/// and landed while it is still in the core's cache (2 MiB against 8 MiB, 512 MiB at 2 ranks on
/// the project's machine: split 0.093 -> 0.073 s, at 4 ranks split 0.145 -> 0.085 s and
/// replicated 0.296 -> 0.202 s; docs/PERFORMANCE.md).
inline constexpr int64_t kHostMessageBytes = int64_t{2} << 20;
/// The message size of a load that lands in device memory: each message is an upload and a
/// collective of the device transport, whose fixed costs want larger ones.
inline constexpr int64_t kDeviceMessageBytes = int64_t{8} << 20;

struct LoadOptions {
  /// PyTorch's strict: any missing or unexpected key or size mismatch fails the load.
  bool strict = true;
  /// Report size mismatches but do not fail on them (the tensors keep their values).
  bool skip_size_mismatch = false;
  /// Only keys matching this regular expression (a search, like Python's re.search) take part,
  /// on both sides, after prefix mapping. Empty: all keys.
  std::string key_filter;
  /// Prefix mapping: a checkpoint key starting with `checkpoint_prefix` is seen as
  /// `model_prefix` + the rest. ("module.", "") strips DDP's prefix; ("", "module.") adds it.
  std::string checkpoint_prefix;
  std::string model_prefix;
  /// Name of the model in error messages ("Error(s) in loading state_dict for <name>:").
  std::string name = "Module";
  /// Largest message between ranks (0: kHostMessageBytes when every rank's tensors are in host
  /// memory, kDeviceMessageBytes when some rank's are on a device), and the staging memory a
  /// rank may hold in flight.
  int64_t message_bytes = 0;
  int64_t staging_bytes = 64ll << 20;
  /// Check every byte read against the checkpoint's checksums before it reaches a tensor.
  /// false is the only way to skip the checks; LoadResult::checksums_verified then says so.
  bool verify_checksums = true;
  /// Read tensor bytes around the page cache (O_DIRECT) where the file system allows: for cold
  /// restarts of checkpoints that do not fit beside the model in memory, and to keep the cache
  /// for other work. Off by default: a warm cache is faster. Same bytes, same checks either way.
  bool direct_io = false;
  /// Read a tensor's bytes straight into it, with no staging copy, where the reading rank is one
  /// of its receivers and the tensor takes the bytes as stored (contiguous host memory, the
  /// stored dtype, one piece): the bytes are verified in place, before anything is sent from
  /// there. Off by default, because it gives up one guarantee: when such a read finds a corrupt
  /// chunk, the load fails on every rank as always, but that tensor then holds the unverified
  /// bytes (by default a failing tensor is never touched). docs/GUARANTEES.md; the saving is one
  /// copy of the bytes this rank reads (docs/PERFORMANCE.md).
  bool read_in_place = false;
  /// Threads that read and verify shard bytes on each rank; 0: the machine's cores shared by the
  /// ranks on it (at least 1, at most 8).
  int reader_threads = 0;
  /// Seconds a rank waits for the others at a phase boundary or for a transfer to progress
  /// before the load fails, naming the ranks that did not arrive. <= 0: wait forever.
  double timeout_seconds = 600;
  /// Progress reports on this rank (see Progress); empty: none.
  ProgressCallback progress;
  /// For a torch.save file as the checkpoint: the sub-dictionary of a nested training
  /// checkpoint whose tensors are loaded ("model", "state_dict", "optimizer.state"; "." the top
  /// level; TensorFileOptions::select). Empty: the file must be a flat state dict. Other formats
  /// refuse it (UsageError).
  std::string select;
  /// The plain values the caller's state holds (model-side keys; SaveOptions::values). Each is
  /// a key of the verdict like a tensor's: missing when the checkpoint has no such value; the
  /// checkpoint's values that no key asks for are unexpected. Every rank passes the same keys.
  std::vector<std::string> value_keys;
  /// Whether a pickled value (saved with allow_pickle) may be loaded; otherwise asking for one
  /// fails the load before any tensor changes (UsageError naming the key).
  bool allow_pickle = false;
  /// Model-side key prefixes whose keys the caller judges itself (Python modules with their own
  /// loading semantics, which their own load_state_dict applies; docs/PYTHON.md). No key under
  /// them is missing or unexpected here: a declared one the checkpoint lacks is listed in
  /// LoadResult::deferred_missing, a checkpoint tensor the partition does not declare in
  /// LoadResult::deferred_unexpected (or read, see read_prefixes), a value under them not in
  /// value_keys is returned in `values`. A declared tensor's size mismatch is still the
  /// verdict's. Every rank passes the same ones.
  std::vector<std::string> deferred_prefixes;
  /// Prefixes (under deferred_prefixes) whose checkpoint tensors the partition does not declare
  /// are read whole, at the checkpoint's shape and dtype, into tensors the load allocates
  /// (LoadResult::deferred): for a module whose own loading may take keys it does not declare
  /// (a pre-hook renaming them, a lazy module). Every rank passes the same ones.
  std::vector<std::string> read_prefixes;
};

/// Seconds spent in each phase on this rank.
struct PhaseSeconds {
  double open = 0, index = 0, plan = 0, verdict = 0, transfer = 0, result = 0;
  double total() const { return open + index + plan + verdict + transfer + result; }
};

struct LoadResult {
  // The verdict: identical on every rank, same order.
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
  std::vector<SizeMismatch> size_mismatches;
  std::vector<Conversion> dtype_conversions;
  std::vector<Uncovered> uncovered;  ///< regions no chunk covers (their keys are also missing)
  std::vector<std::string> hints;    ///< e.g. a common prefix between the two key sets
  bool ok = true;                    ///< false: the load failed and changed nothing
  std::string error;                 ///< PyTorch-style message when !ok
  // This rank's and everyone's figures.
  int64_t bytes_read = 0;
  int64_t bytes_read_total = 0;
  int64_t bytes_needed_total = 0;  ///< bytes of the stored chunk parts that some rank needed
  /// The most host staging memory this rank held at once during the transfer (status words and
  /// the bytes it read or received through host memory).
  int64_t staging_bytes_peak = 0;
  /// The plan's largest message: LoadOptions::message_bytes, or the size it chose (0).
  int64_t message_bytes = 0;
  PhaseSeconds seconds;
  double wall_seconds = 0;  ///< the load's wall time, max over ranks
  /// Which backend moved the bytes into the ranks' tensors (identical on every rank): "mpi";
  /// "nccl" for device (CUDA) destinations on several ranks; "cuda" for them on one rank
  /// (host-to-device copies only); a test double's name in the tests.
  std::string transport = "mpi";
  /// Why CUDA destinations did not go by NCCL ("" when they did, or when there were none):
  /// "ranks 0 and 1 share one GPU (...), which NCCL refuses", "built without NCCL", ...
  std::string transport_reason;
  /// Whether every byte that reached a tensor was checked against a checksum first (false when
  /// LoadOptions::verify_checksums was turned off, or the checkpoint's format has none).
  bool checksums_verified = true;
  /// Why checksums_verified is false ("" when it is true): "safetensors files carry no
  /// checksums", "torch.save files carry no per-tensor checksums", "turned off
  /// (verify_checksums=false)".
  std::string checksums_reason;
  /// The checkpoint's format: "shardload", "safetensors" (a Hugging Face directory or one
  /// .safetensors file) or "torch" (a torch.save file).
  std::string format = "shardload";
  /// What the load did besides reading (identical on every rank): e.g. a checkpoint that a
  /// killed save had left beside the path, put back (docs/GUARANTEES.md).
  std::vector<std::string> notes;
  /// The checkpoint's plain values for LoadOptions::value_keys that it holds (model-side keys),
  /// in value_keys order (identical on every rank).
  ValueList values;
  /// The checkpoint's tensors under LoadOptions::read_prefixes that the partition did not
  /// declare, whole, in the checkpoint's key order (identical on every rank).
  TensorList deferred;
  /// Declared keys under LoadOptions::deferred_prefixes that the checkpoint does not hold.
  std::vector<std::string> deferred_missing;
  /// The checkpoint's tensors under LoadOptions::deferred_prefixes, neither declared nor read
  /// (not under read_prefixes), and its pickled values there when allow_pickle is off: their
  /// keys (values first, then tensors in the checkpoint's order).
  std::vector<std::string> deferred_unexpected;
};

/// Thrown on every rank when the verdict fails; carries the full result.
class LoadVerdictError : public VerdictError {
 public:
  explicit LoadVerdictError(LoadResult result)
      : VerdictError(result.error), result_(std::move(result)) {}
  const LoadResult& result() const { return result_; }

 private:
  LoadResult result_;
};

}  // namespace shardload
