// Load planning as a pure function of (global index, every rank's needs, options): every rank
// computes the same plan, so no collective is ever issued out of order.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "core/chunk_record.h"
#include "sharding/box.h"
#include "sharding/index_check.h"
#include "sharding/rank_groups.h"
#include "sharding/save_plan.h"

namespace shardload {

/// A region of a tensor that one rank wants loaded (its partition entry), in global terms.
using Need = Holding;

struct PlanOptions {
  /// Pieces are coalesced into messages of at most this many bytes; larger pieces are cut
  /// (split_for_budget) so that no message exceeds it. Bounds staging memory per message.
  int64_t message_bytes = 64ll << 20;
};

/// A part of some ranks' regions that no stored chunk covers: the bounding box of the uncovered
/// elements. One entry per group of ranks with identical needs.
struct Uncovered {
  std::string key;
  std::vector<int> ranks;  ///< the ranks that need this region, ascending
  Box region;
  bool operator==(const Uncovered&) const = default;
};

struct SizeMismatch {
  std::string key;
  Shape checkpoint_shape;
  Shape model_shape;
  bool operator==(const SizeMismatch&) const = default;
};

struct Conversion {
  std::string key;
  DType from = DType::kFloat32;  ///< checkpoint dtype
  DType to = DType::kFloat32;    ///< model dtype
  bool operator==(const Conversion&) const = default;
};

/// Where a piece lands: in the Need `need` of the list of group `group` (RankGroups), on every
/// member of the group, or (`rank` >= 0, a need that is a symbolic split) on that member alone.
struct Receiver {
  int32_t group = 0;
  int32_t need = 0;
  int32_t rank = -1;
  bool operator==(const Receiver&) const = default;
};

/// One unit of reading and delivery: a box of one stored chunk, read by `reader`, delivered to
/// every rank of its receiving groups. Pieces are disjoint; every element a rank needs reaches it
/// in exactly one piece.
struct Piece {
  int32_t chunk = 0;   ///< index into the global index
  Box box;             ///< global coordinates; inside the chunk and inside each receiver's region
  int reader = 0;      ///< a rank of one of the receiving groups
  int64_t nbytes = 0;  ///< box_numel(box) * element size of the checkpoint dtype
  /// Its receivers: LoadPlan::receivers[receivers_at, receivers_at + receivers_size), ascending
  /// by group, a group at most once (read them with LoadPlan::receivers_of).
  int64_t receivers_at = 0;
  int32_t receivers_size = 0;
};

/// Every piece of a message starts at a multiple of this many bytes from the message's start
/// (on every route, host and device: no typed access at a misaligned address, and a device
/// view of a piece needs its storage offset divisible by the element size).
constexpr int64_t kPieceAlign = 16;

/// Where a piece that follows `end` bytes of a message starts.
constexpr int64_t aligned_piece_start(int64_t end) {
  return (end + kPieceAlign - 1) / kPieceAlign * kPieceAlign;
}

/// Pieces with the same reader and the same receiving ranks, read into one buffer (in `pieces`
/// order, each piece's elements in C order, each piece starting at aligned_piece_start of the
/// previous piece's end) and delivered together.
struct Message {
  int reader = 0;
  int32_t rank_set = 0;         ///< its receiving ranks (read them with LoadPlan::ranks_of)
  std::vector<int32_t> pieces;  ///< indices into LoadPlan::pieces
  int64_t nbytes = 0;           ///< the end of its last piece, alignment gaps included
};

struct LoadPlan {
  /// Keys some rank needs that the index lacks: in the order of rank 0's needs, then keys first
  /// seen in rank 1's, and so on.
  std::vector<std::string> missing_keys;
  /// Index keys no rank needs, in order of first appearance in the index.
  std::vector<std::string> unexpected_keys;
  /// Keys in both whose global shapes differ (model order, as missing_keys).
  std::vector<SizeMismatch> size_mismatches;
  /// Keys in both, same shape, different dtype (model order; the model dtype is the needing
  /// ranks' — resolve_declarations guarantees they agree).
  std::vector<Conversion> conversions;
  /// For keys in both with equal shapes: one entry per (key, group of ranks with identical needs)
  /// whose region the chunks do not cover, in model order then rank order. Such keys get no
  /// pieces on any rank.
  std::vector<Uncovered> uncovered;
  std::vector<Piece> pieces;
  /// Messages in the order every rank executes them.
  std::vector<Message> messages;
  /// Bytes each rank reads from disk (sum of nbytes of the pieces it reads). In the plan of one
  /// rank (plan_load_for_rank), only that rank's entry is its whole share.
  std::vector<int64_t> read_bytes;
  /// -1 for the whole plan; the rank whose share this is (plan_load_for_rank).
  int rank = -1;

  /// The ranks a message goes to, ascending (the reader included). Consumers of a plan use this
  /// accessor, never the representation behind it.
  std::span<const int> ranks_of(const Message& message) const {
    const auto at = static_cast<size_t>(rank_set_at[static_cast<size_t>(message.rank_set)]);
    const auto end = static_cast<size_t>(rank_set_at[static_cast<size_t>(message.rank_set) + 1]);
    return std::span<const int>(rank_sets).subspan(at, end - at);
  }
  /// Where `piece` lands on `rank`: the index of the Need in that rank's list, or -1 when the
  /// rank does not receive it. O(log receiving groups).
  int32_t need_of(const Piece& piece, int rank) const;
  /// The receivers of `piece` (ascending by group, then rank) and where it lands with each.
  std::span<const Receiver> receivers_of(const Piece& piece) const {
    return std::span<const Receiver>(receivers).subspan(static_cast<size_t>(piece.receivers_at),
                                                        static_cast<size_t>(piece.receivers_size));
  }

  // The representation behind the accessors: shared lists, so that a piece received by many
  // ranks costs as much as one received by one group, and a message's ranks are stored once per
  // distinct set of receiving groups.
  std::vector<Receiver> receivers;   ///< receiver lists of the pieces, back to back (shared)
  std::vector<int> rank_sets;        ///< distinct receiving rank sets, back to back
  std::vector<int64_t> rank_set_at;  ///< set s is rank_sets[rank_set_at[s], rank_set_at[s + 1])
  std::vector<int32_t> group_of;     ///< group of each rank (as in the RankGroups planned)
};

/// The whole load plan. `needs` holds every rank's partition, once per group of ranks with
/// identical needs (RankGroups; splits over all ranks may be symbolic); every rank computes the
/// same plan from the same inputs. Pieces are made only for keys present in both with equal
/// global shapes and full coverage: each stored chunk's needed part cut into boxes with one set
/// of receivers each (decompose), in index order. A piece's reader is one of its receiving
/// ranks: among the pieces with the same receiving ranks, taken largest first (ties in piece
/// order), each goes to the member with the fewest bytes of that set so far (ties to the lower
/// rank), so reads are balanced and local, and the choice depends only on pieces every member of
/// the set has in its own share. Only elements some rank needs are read.
LoadPlan plan_load(const std::vector<ChunkRecord>& index, const RankGroups& needs,
                   const PlanOptions& options);

/// Rank `rank`'s share of plan_load: the verdict fields whole (the same on every rank), and only
/// the pieces it receives (every piece it reads is one) and the messages that carry them, in the
/// whole plan's order, with the same boxes, readers and receiving ranks. Each rank's share of a
/// message is the same message, so the ranks of a message issue it in the same order without
/// anyone holding the others' pieces. The cost grows with the rank's own needs and the chunks
/// and receivers they meet (a symbolic split: O(log) per tensor to find the members it meets),
/// not with ranks times tensors: FSDP over thousands of ranks costs O(tensors) per rank.
LoadPlan plan_load_for_rank(const std::vector<ChunkRecord>& index, const RankGroups& needs,
                            int rank, const PlanOptions& options);

}  // namespace shardload
