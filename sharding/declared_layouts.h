// Every rank's declarations, stored once per distinct layout: the input of resolve_declarations.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/wire.h"
#include "sharding/save_plan.h"

namespace shardload {

/// The declarations of all ranks, each distinct layout once.
///
/// Canonical form. A kShard or kReplicated declaration says the same on every rank that makes
/// it, so data-parallel replicas that add the same boxes (add_shard, what large jobs use) have
/// byte-identical layouts. A kSplit declaration names its group by absolute ranks, which differ
/// between replicas ([0..7] on one tensor-parallel group, [8..15] on the next): in a canonical
/// layout a non-empty `group` holds each member's offset from the declaring rank (member - rank),
/// so rank 3 of [0..7] and rank 11 of [8..15] both declare [-3..4]. An empty group still means
/// all ranks. The split's offset and global size are not part of the layout (they depend on the
/// other members' local sizes); resolve_declarations works them out per group of ranks whose
/// members have the same layouts, so replicas still share one resolved list.
struct DeclaredLayouts {
  /// Distinct canonical layouts, in the order of the first rank that declares each.
  std::vector<std::vector<Declaration>> layouts;
  /// layout_of[r]: index of rank r's layout.
  std::vector<int32_t> layout_of;

  int ranks() const { return static_cast<int>(layout_of.size()); }

  /// Groups ranks' declarations (absolute split groups, declarations[r] is rank r's) by equal
  /// canonical layout.
  static DeclaredLayouts from_ranks(const std::vector<std::vector<Declaration>>& declarations);
  /// Groups ranks by equal canonical bytes (encoded[r] = encode_layout(rank r's, r)) and decodes
  /// each distinct layout once. Throws CommError on malformed bytes.
  static DeclaredLayouts from_encoded(const std::vector<std::string>& encoded);
};

/// Appends one declaration's canonical bytes to `out` (encode_layout, one declaration at a time,
/// after their count).
void encode_declaration(WireWriter& out, const Declaration& d, int rank);
/// The canonical bytes of one rank's declarations (their count, then each, split groups relative
/// to `rank`): equal bytes for equal canonical layouts.
std::string encode_layout(const std::vector<Declaration>& declarations, int rank);
/// Inverse of encode_layout, with split groups left relative and the fields a kind does not use
/// left empty (a replicated declaration's global shape and offset). Throws CommError naming what
/// is malformed when the bytes are not an encoded layout.
std::vector<Declaration> decode_layout(std::string_view bytes);

}  // namespace shardload
