// The exchange of every rank's partition declarations (what each rank holds or needs), grouped:
// ranks with the same canonical layout (data-parallel replicas) send it once.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "sharding/declared_layouts.h"
#include "transport/communicator.h"

namespace shardload {

/// XXH3-128 of a layout's canonical bytes (encode_layout).
struct LayoutHash {
  uint64_t low = 0;
  uint64_t high = 0;
  bool operator==(const LayoutHash&) const = default;
};
LayoutHash layout_hash(std::string_view bytes);
using LayoutHasher = LayoutHash (*)(std::string_view bytes);

/// Ranks grouped by (hash, size) of their canonical bytes, as every rank works it out from the
/// first step of the exchange.
struct HashGroups {
  std::vector<int32_t> layout_of;    ///< per rank: index of its layout
  std::vector<int> representatives;  ///< per layout: its first rank, who sends its bytes
};
/// `hashes[r]`, `sizes[r]`: rank r's. Pure.
HashGroups group_by_hash(const std::vector<LayoutHash>& hashes, const std::vector<uint64_t>& sizes);
/// The layouts once their representatives' bytes are known (`gathered[r]` is rank r's
/// contribution to the second step: its bytes when it represents a layout, empty otherwise).
/// Pure; throws CommError on malformed bytes.
DeclaredLayouts assemble_layouts(HashGroups groups, const std::vector<std::string>& gathered);

/// Every rank's declarations, each distinct layout once. Collective: every rank of `comm` calls
/// it with its own declarations, in the same order relative to other collectives.
///
/// Three steps: an allgather of each rank's 128-bit hash and byte count (24 bytes per rank); an
/// allgatherv in which only the first rank of each distinct (hash, size) sends its bytes; an
/// allreduce in which each rank says whether its own bytes differ from those of the rank it was
/// grouped with. Only when some rank's do (a hash collision) does a plain allgather of every
/// rank's bytes follow, grouped by the bytes themselves, so a collision never merges different
/// layouts. Bytes received per rank: 24 x ranks plus the distinct layouts. `hasher` is for tests.
DeclaredLayouts exchange_declarations(const Communicator& comm,
                                      const std::vector<Declaration>& mine,
                                      LayoutHasher hasher = layout_hash);
/// The same, from this rank's declarations already encoded (encode_layout(mine, rank), or
/// Partition::encoded_declarations: no copy of a large partition's declarations).
DeclaredLayouts exchange_encoded_declarations(const Communicator& comm, const std::string& bytes,
                                              LayoutHasher hasher = layout_hash);

}  // namespace shardload
