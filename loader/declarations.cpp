#include "loader/declarations.h"

#include <xxhash.h>

#include <cstring>
#include <unordered_map>

#include "core/error.h"

namespace shardload {
namespace {

struct HashKey {
  LayoutHash hash;
  uint64_t size;
  bool operator==(const HashKey&) const = default;
};
struct HashKeyHash {
  size_t operator()(const HashKey& k) const { return static_cast<size_t>(k.hash.low ^ k.size); }
};

constexpr size_t kHeadBytes = 24;  // hash (16) and size (8)

}  // namespace

LayoutHash layout_hash(std::string_view bytes) {
  const XXH128_hash_t h = XXH3_128bits(bytes.data(), bytes.size());
  return LayoutHash{h.low64, h.high64};
}

HashGroups group_by_hash(const std::vector<LayoutHash>& hashes,
                         const std::vector<uint64_t>& sizes) {
  HashGroups out;
  out.layout_of.reserve(hashes.size());
  std::unordered_map<HashKey, int32_t, HashKeyHash> layout_of_key;
  for (size_t r = 0; r < hashes.size(); ++r) {
    auto [it, fresh] = layout_of_key.try_emplace(HashKey{hashes[r], sizes[r]},
                                                 static_cast<int32_t>(out.representatives.size()));
    if (fresh) out.representatives.push_back(static_cast<int>(r));
    out.layout_of.push_back(it->second);
  }
  return out;
}

DeclaredLayouts assemble_layouts(HashGroups groups, const std::vector<std::string>& gathered) {
  DeclaredLayouts out;
  out.layouts.reserve(groups.representatives.size());
  for (int r : groups.representatives) {
    out.layouts.push_back(decode_layout(gathered[static_cast<size_t>(r)]));
  }
  out.layout_of = std::move(groups.layout_of);
  return out;
}

DeclaredLayouts exchange_declarations(const Communicator& comm,
                                      const std::vector<Declaration>& mine, LayoutHasher hasher) {
  return exchange_encoded_declarations(comm, encode_layout(mine, comm.rank()), hasher);
}

DeclaredLayouts exchange_encoded_declarations(const Communicator& comm, const std::string& bytes,
                                              LayoutHasher hasher) {
  const int rank = comm.rank();
  const LayoutHash hash = hasher(bytes);

  // Step 1: every rank's hash and size.
  std::string head(kHeadBytes, '\0');
  const uint64_t size = bytes.size();
  std::memcpy(head.data(), &hash.low, 8);
  std::memcpy(head.data() + 8, &hash.high, 8);
  std::memcpy(head.data() + 16, &size, 8);
  const auto heads = comm.allgather(head);
  std::vector<LayoutHash> hashes(heads.size());
  std::vector<uint64_t> sizes(heads.size());
  for (size_t r = 0; r < heads.size(); ++r) {
    if (heads[r].size() != kHeadBytes) {
      throw CommError("malformed declaration exchange: rank " + std::to_string(r) + " sent " +
                      std::to_string(heads[r].size()) + " bytes of hash, not " +
                      std::to_string(kHeadBytes));
    }
    std::memcpy(&hashes[r].low, heads[r].data(), 8);
    std::memcpy(&hashes[r].high, heads[r].data() + 8, 8);
    std::memcpy(&sizes[r], heads[r].data() + 16, 8);
  }
  HashGroups groups = group_by_hash(hashes, sizes);

  // Step 2: one rank per distinct layout sends its bytes.
  const int32_t mine_layout = groups.layout_of[static_cast<size_t>(rank)];
  const int representative = groups.representatives[static_cast<size_t>(mine_layout)];
  const auto gathered = comm.allgather(representative == rank ? bytes : std::string());

  // Step 3: a hash collision would group a rank with different bytes; every rank checks its own
  // and all learn whether any did.
  const bool differs = gathered[static_cast<size_t>(representative)] != bytes;
  if (comm.allreduce_max(int64_t{differs ? 1 : 0}) != 0) {
    return DeclaredLayouts::from_encoded(comm.allgather(bytes));
  }
  return assemble_layouts(std::move(groups), gathered);
}

}  // namespace shardload
