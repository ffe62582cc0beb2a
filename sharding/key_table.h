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
class KeyTable {
 public:
  explicit KeyTable(size_t expected = 0);

  /// Inserts (key, value) unless the key is present; returns the key's value and whether it was
  /// inserted.
  std::pair<int32_t, bool> try_emplace(std::string_view key, int32_t value);
  /// The key's value, or -1 when absent.
  int32_t find(std::string_view key) const;
  size_t size() const { return size_; }

 private:
  struct Slot {
    std::string_view key;
    uint64_t hash = 0;
    int32_t value = -1;  ///< -1: empty
  };
  void grow();

  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

}  // namespace shardload
