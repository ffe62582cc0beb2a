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
#include "sharding/save_plan.h"

namespace shardload {

/// A region of a tensor that one rank wants loaded (its partition entry), in global terms.
using Need = Holding;

struct PlanOptions {
  /// Pieces are coalesced into messages of at most this many bytes; larger pieces are cut
  /// (split_for_budget) so that no message exceeds it. Bounds staging memory per message.
  int64_t message_bytes = 64ll << 20;
};

/// A part of a rank's region that no stored chunk covers: the bounding box of the uncovered
/// elements.
struct Uncovered {
  std::string key;
  int rank = 0;
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

/// One unit of reading and delivery: a box of one stored chunk, read by `reader`, delivered to
/// every receiver. Pieces are disjoint; every element a rank needs reaches it in exactly one piece.
struct Piece {
  int32_t chunk = 0;  ///< index into the global index
  Box box;            ///< global coordinates; inside the chunk and inside each receiver's region
  int reader = 0;     ///< one of the receivers
  /// (rank, index of the Need in that rank's list), ascending by rank; a rank appears once.
  std::vector<std::pair<int, int32_t>> receivers;
  int64_t nbytes = 0;  ///< box_numel(box) * element size of the checkpoint dtype
};

/// Pieces with the same reader and the same receiving ranks, read into one buffer back to back
/// (in `pieces` order, each piece's elements in C order) and delivered together.
struct Message {
  int reader = 0;
  std::vector<int> ranks;       ///< receiving ranks, ascending (includes the reader)
  std::vector<int32_t> pieces;  ///< indices into LoadPlan::pieces
  int64_t nbytes = 0;
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
  /// For keys in both with equal shapes: one entry per (key, rank) whose region the chunks do not
  /// cover, in model order then rank order. Such keys get no pieces on any rank.
  std::vector<Uncovered> uncovered;
  std::vector<Piece> pieces;
  /// Messages in the order every rank executes them.
  std::vector<Message> messages;
  /// Bytes each rank reads from disk (sum of nbytes of the pieces it reads).
  std::vector<int64_t> read_bytes;

  /// The ranks a message goes to, ascending (the reader included). Consumers of a plan use this
  /// accessor, never the representation behind it.
  std::span<const int> ranks_of(const Message& message) const { return message.ranks; }
  /// Where `piece` lands on `rank`: the index of the Need in that rank's list, or -1 when the
  /// rank does not receive it.
  int32_t need_of(const Piece& piece, int rank) const;
};

/// The whole load plan. `needs[r]` is rank r's partition. Pieces are made only for keys present
/// in both with equal global shapes and full coverage; a piece's reader is one of its receivers,
/// the one with the fewest bytes assigned so far (pieces taken largest first, ties to the lower
/// rank), so reads are balanced and mostly local. Only elements some rank needs are read.
LoadPlan plan_load(const std::vector<ChunkRecord>& index,
                   const std::vector<std::vector<Need>>& needs, const PlanOptions& options);

}  // namespace shardload
