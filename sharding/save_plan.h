// Save planning as pure functions: resolve what every rank declared, check it, choose writers.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/shape.h"
#include "sharding/box.h"

namespace shardload {

/// What one rank declares about one of its tensors, before the global picture is known.
struct Declaration {
  enum class Kind {
    kReplicated,  ///< the rank holds the whole tensor; global_shape = local_shape
    kShard,       ///< the rank holds the box (offset, local_shape) of a tensor of global_shape
    kSplit,       ///< split along split_dim across `group` (in its order); sizes may differ
  };
  std::string key;
  DType dtype = DType::kFloat32;
  Shape local_shape;
  Kind kind = Kind::kReplicated;
  Shape global_shape;      ///< kShard only
  Shape offset;            ///< kShard only
  int64_t split_dim = 0;   ///< kSplit only
  std::vector<int> group;  ///< kSplit only: the ranks that share the tensor; empty = all ranks

  bool operator==(const Declaration&) const = default;
};

/// A tensor region a rank holds (save) or needs (load), in global terms.
struct Holding {
  std::string key;
  DType dtype = DType::kFloat32;
  Shape global_shape;
  Box region;
  /// -1, or (in RankGroups made with symbolic splits) the index of the SplitTable of a split over
  /// all ranks: then region.offset[dim] is 0 and each member's offset is the table's.
  int32_t split = -1;

  bool operator==(const Holding&) const = default;
};

/// Throws UsageError, naming the key and both ranks, when `b` (rank rb) describes the same key
/// as `a` (rank ra) with another dtype or global shape. `verb` words it: "holds", "needs".
void check_same_tensor(const Holding& a, int ra, const Holding& b, int rb, const std::string& verb);

struct RankGroups;

/// Which rank writes which holding.
struct SavePlan {
  /// writes[r]: indices into rank r's holdings (its group's list) that rank r writes, ascending.
  std::vector<std::vector<int32_t>> writes;
  /// Bytes each rank writes.
  std::vector<int64_t> bytes_per_rank;
};

/// Checks the holdings of all ranks and chooses one writer for every distinct region.
/// Identical regions of a key held by several ranks (replicas) are written once, by the holder
/// with the fewest bytes so far (regions taken largest first, ties to the lower rank), so bytes
/// written per rank stay within one largest region of each other. Works per group of ranks with
/// identical holdings (a heap of its members by bytes written), so the cost grows with distinct
/// layouts times tensors plus ranks. Throws UsageError naming the key and ranks when a key has
/// different dtypes or global shapes on different ranks, a region lies outside the global shape,
/// two different regions of a key overlap, or the regions of a key leave part of the global
/// tensor uncovered (naming the uncovered box).
SavePlan plan_save(const RankGroups& holdings);

}  // namespace shardload
