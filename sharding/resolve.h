// From what ranks declared to what they hold or need, in global terms, once per group of ranks.
#pragma once

#include "sharding/declared_layouts.h"
#include "sharding/rank_groups.h"

namespace shardload {

/// Turns every rank's declarations into holdings, one per declaration in the same order, grouped:
/// ranks with the same layout whose split groups (if any) consist of ranks with the same layouts
/// share one group and one list. A replicated tensor's region is the whole tensor; a shard's is
/// its box; a split's global shape is the local shape with split_dim replaced by the sum over the
/// group, and its offset is the sum over the members before the rank. The work and the result
/// grow with distinct layouts times tensors plus ranks times split-group sizes, not with ranks
/// times tensors.
///
/// Throws UsageError, naming the key and the lowest rank concerned (and the other rank of a
/// disagreeing pair), when a rank declares a key twice, a split's group does not contain the
/// rank or names a rank twice or out of range, members of a group disagree (kind, dim, group,
/// other dims) or one does not declare the key, a kShard box lies outside its global shape, a
/// dimension is out of range or negative, or ranks disagree on a key's dtype or global shape.
///
/// With `symbolic_splits`, a split over all ranks (FSDP, a DTensor Shard over the world) is not
/// resolved per rank: ranks with the same layout share one group whose holding of the key names
/// a SplitTable (Holding::split) giving each member's offset, so FSDP over thousands of ranks
/// resolves to a few groups (RankGroups::region_of makes a member's region concrete).
RankGroups resolve_declarations(const DeclaredLayouts& declared, bool symbolic_splits = false);

}  // namespace shardload
