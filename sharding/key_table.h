// A flat hash table from keys (string views into storage that outlives it) to small integers.
#pragma once

#include <cstdint>
#include <string_view>
#include <utility>
#include <vector>

namespace shardload {

/// Maps tensor keys to non-negative int32 values (indices) without a heap node per key: open
/// addressing with linear probing over one array, so that tables of 100,000 keys cost a few
/// allocations, not 100,000. Keys are views: their characters must outlive the table.
///
/// A slot is 8 bytes (32 bits of the key's hash and the entry's number), so that a table of
/// 100,000 keys probes 2 MiB, not the 8 MiB a slot holding the view would take: a load builds
/// such tables over every key, and each probe of a fresh key is a cache miss. The entries (view
/// and value) lie in insertion order, which is the order most lookups come in.
class KeyTable {
 public:
  explicit KeyTable(size_t expected = 0);

  /// Inserts (key, value) unless the key is present; returns the key's value and whether it was
  /// inserted.
  std::pair<int32_t, bool> try_emplace(std::string_view key, int32_t value);
  /// The key's value, or -1 when absent.
  int32_t find(std::string_view key) const;
  /// Starts fetching the key's home slot into the cache: a loop over many keys that calls this
  /// a few keys ahead of its try_emplace or find overlaps their cache misses.
  void prefetch(std::string_view key) const;
  /// How many keys ahead such a loop prefetches.
  static constexpr size_t kPrefetchAhead = 8;
  size_t size() const { return entries_.size(); }

 private:
  struct Slot {
    uint32_t hash = 0;   ///< the low 32 bits of the key's hash; the slot's home is hash & mask_
    int32_t entry = -1;  ///< -1: empty
  };
  struct Entry {
    std::string_view key;
    int32_t value;
  };
  void grow();

  std::vector<Slot> slots_;
  std::vector<Entry> entries_;
  uint32_t mask_ = 0;
};

}  // namespace shardload
