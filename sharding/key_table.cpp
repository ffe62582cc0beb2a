#include "sharding/key_table.h"

#include <functional>
#include <stdexcept>

namespace shardload {
namespace {

size_t capacity_for(size_t n) {
  size_t c = 16;
  while (c < 2 * n) c *= 2;
  return c;
}

uint32_t hash32(std::string_view key) {
  return static_cast<uint32_t>(std::hash<std::string_view>{}(key));
}

}  // namespace

KeyTable::KeyTable(size_t expected)
    : slots_(capacity_for(expected)), mask_(static_cast<uint32_t>(slots_.size() - 1)) {
  entries_.reserve(expected);
}

std::pair<int32_t, bool> KeyTable::try_emplace(std::string_view key, int32_t value) {
  if (2 * (entries_.size() + 1) > slots_.size()) grow();
  const uint32_t h = hash32(key);
  for (uint32_t i = h & mask_;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.entry < 0) {
      s = Slot{h, static_cast<int32_t>(entries_.size())};
      entries_.push_back(Entry{key, value});
      return {value, true};
    }
    if (s.hash == h) {
      const Entry& e = entries_[static_cast<size_t>(s.entry)];
      if (e.key == key) return {e.value, false};
    }
  }
}

int32_t KeyTable::find(std::string_view key) const {
  const uint32_t h = hash32(key);
  for (uint32_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.entry < 0) return -1;
    if (s.hash == h) {
      const Entry& e = entries_[static_cast<size_t>(s.entry)];
      if (e.key == key) return e.value;
    }
  }
}

void KeyTable::prefetch(std::string_view key) const {
  __builtin_prefetch(&slots_[hash32(key) & mask_]);
}

void KeyTable::grow() {
  if (slots_.size() >= (size_t{1} << 31)) throw std::length_error("KeyTable: too many keys");
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.size() * 2, Slot{});
  mask_ = static_cast<uint32_t>(slots_.size() - 1);
  for (const Slot& s : old) {
    if (s.entry < 0) continue;
    uint32_t i = s.hash & mask_;
    while (slots_[i].entry >= 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

}  // namespace shardload
