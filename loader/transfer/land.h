// The land stage of the transfer: where each piece a rank receives goes in its tensors, and the
// copies that put it there (converting dtype like copy_). Also the questions the other stages
// ask of a destination: can the bytes go straight into it as stored (a direct receive, a read in
// place), does it live in device memory.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "core/chunk_record.h"
#include "loader/partition.h"
#include "sharding/load_plan.h"
#include "transport/device_transport.h"

namespace shardload {

/// Pieces smaller than this are staged even with read_in_place: small tensors are read many
/// per pread (packed), which beats one read each.
constexpr int64_t kInPlaceBytes = int64_t{64} << 10;

/// Copies of at least this many bytes go past the cache (copy_past_cache).
constexpr size_t kPastCacheBytes = size_t{256} << 10;

/// memcpy(dst, src, n), but a copy of kPastCacheBytes or more writes `dst` with non-temporal
/// stores: a landing's destination is cold (a tensor, far larger than the cache), and ordinary
/// stores first read every destination line from memory. bench/copy_paths on this project's
/// machine, 256 MiB from an 8 MiB staging block still in the cache into cold memory: 17.6 ms
/// against memcpy's 26.6 ms (median round). The stores are fenced before it returns: whatever the
/// calling thread publishes afterwards (a message's state) is seen after the bytes.
void copy_past_cache(void* dst, const void* src, size_t n);

/// This rank's destinations of the plan's pieces.
class Lander {
 public:
  /// `my_needs`: this rank's needs (the list the plan's need indices refer to);
  /// `entry_of_need`: the partition entry each lands in. `backend` (may be null): the memory
  /// that counts as device memory.
  Lander(const LoadPlan& plan, const std::vector<ChunkRecord>& index, int rank,
         const std::vector<Need>& my_needs, const std::vector<int32_t>& entry_of_need,
         const Partition& partition, DeviceBackend* backend);

  bool on_device(const at::Tensor& t) const { return backend_ && backend_->holds(t); }

  /// The part of this rank's tensor that `piece` covers (`need`: plan.need_of(piece, rank)).
  at::Tensor destination(const Piece& piece, int32_t need) const;

  /// This rank's destination of a one-piece message when the bytes can be received into it as
  /// they are: contiguous, the checkpoint's dtype, all of the message's bytes, in device memory
  /// (`device`) or host memory. Undefined otherwise. 0-d tensors included: the bytes are
  /// addressed by data_ptr(), never through a dtype view.
  at::Tensor direct_destination(const Message& m, bool device) const;

  /// Whether every piece of `m` that this rank receives lands in device memory (false when it
  /// receives none).
  bool lands_on_device(const Message& m) const;

  /// For a message this rank alone receives: per piece, the tensor bytes it can be read into
  /// directly (a piece of at least kInPlaceBytes that is all of a contiguous host destination in
  /// the stored dtype), or nullptr (read into staging and landed). Empty when none can.
  std::vector<char*> in_place_targets(const Message& m) const;

  /// Calls `fn(piece, need, position)` for each piece of `m` that this rank receives, with the
  /// piece's position in the message's buffer.
  template <typename Fn>
  void for_my_pieces(const Message& m, Fn&& fn) const {
    int64_t pos = 0;
    for (int32_t p : m.pieces) {
      pos = aligned_piece_start(pos);
      const Piece& piece = plan_.pieces[static_cast<size_t>(p)];
      if (const int32_t need = plan_.need_of(piece, rank_); need >= 0) fn(piece, need, pos);
      pos += piece.nbytes;
    }
  }

  /// Copies this rank's pieces of `m` from its host bytes into the tensors, converting dtype
  /// like copy_ (a device destination: a host-to-device copy). Pieces with a non-null entry in
  /// `in_place` (in_place_targets) were read where they lie and are only counted. Returns the
  /// bytes landed.
  int64_t land(const Message& m, const char* bytes, const std::vector<char*>& in_place = {}) const;

  /// Enqueues on `device` the landing of this rank's pieces of `m` from its device bytes.
  int64_t land_on_device(const Message& m, const char* bytes, DeviceTransport& device) const;

 private:
  const LoadPlan& plan_;
  const std::vector<ChunkRecord>& index_;
  const int rank_;
  const std::vector<Need>& needs_;
  const std::vector<int32_t>& entry_of_need_;
  const Partition& partition_;
  DeviceBackend* backend_;
  /// Per need: its tensor's bytes when it is a contiguous host tensor (a piece that covers it
  /// whole, in its dtype, lands with one memcpy); nullptr otherwise.
  std::vector<void*> whole_;
};

}  // namespace shardload
