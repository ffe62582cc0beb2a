#include "io/checksum.h"

#include <xxhash.h>

#include <new>

namespace shardload {

uint64_t checksum(const void* data, size_t n) { return XXH3_64bits(data, n); }

struct StreamingChecksum::State {
  State() : state(XXH3_createState()) {
    if (!state) throw std::bad_alloc();
    XXH3_64bits_reset(state);
  }
  ~State() { XXH3_freeState(state); }
  XXH3_state_t* state;
};

StreamingChecksum::StreamingChecksum() : state_(std::make_unique<State>()) {}
StreamingChecksum::~StreamingChecksum() = default;

void StreamingChecksum::update(const void* data, size_t n) {
  if (n) XXH3_64bits_update(state_->state, data, n);
}

uint64_t StreamingChecksum::digest() const { return XXH3_64bits_digest(state_->state); }

}  // namespace shardload
