#include "sharding/key_table.h"

#include <functional>

namespace shardload {
namespace {

size_t capacity_for(size_t n) {
  size_t c = 16;
  while (c < 2 * n) c *= 2;
  return c;
}

}  // namespace

KeyTable::KeyTable(size_t expected)
    : slots_(capacity_for(expected)), mask_(capacity_for(expected) - 1) {}

std::pair<int32_t, bool> KeyTable::try_emplace(std::string_view key, int32_t value) {
  if (2 * (size_ + 1) > slots_.size()) grow();
  const uint64_t h = std::hash<std::string_view>{}(key);
  for (size_t i = h & mask_;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.value < 0) {
      s = Slot{key, h, value};
      ++size_;
      return {value, true};
    }
    if (s.hash == h && s.key == key) return {s.value, false};
  }
}

int32_t KeyTable::find(std::string_view key) const {
  const uint64_t h = std::hash<std::string_view>{}(key);
  for (size_t i = h & mask_;; i = (i + 1) & mask_) {
    const Slot& s = slots_[i];
    if (s.value < 0) return -1;
    if (s.hash == h && s.key == key) return s.value;
  }
}

void KeyTable::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.size() * 2, Slot{});
  mask_ = slots_.size() - 1;
  for (const Slot& s : old) {
    if (s.value < 0) continue;
    size_t i = s.hash & mask_;
    while (slots_[i].value >= 0) i = (i + 1) & mask_;
    slots_[i] = s;
  }
}

}  // namespace shardload
