// The route stage of the transfer: how each message moves, decided from the plan (and, for the
// device route, from one reduction over the index's chunks), so that every rank of a message
// decides the same without holding the others' shares. Pure: no transport, no tensor.
#pragma once

#include <cstdint>
#include <vector>

#include "core/chunk_record.h"
#include "loader/transfer/message.h"
#include "sharding/load_plan.h"

namespace shardload {

/// Messages at least this large with one piece go in two steps (status, then data), so that
/// receivers can take the data straight into their tensors.
constexpr int64_t kTwoStepBytes = int64_t{1} << 20;

/// The route of `m` when its bytes go through host memory: kLocal (one receiver), kTwoStep (one
/// piece of at least kTwoStepBytes) or kOneStep.
Route host_route(const LoadPlan& plan, const Message& m);

/// The chunks of the index that some rank lands in host memory, one bit per chunk. Each rank
/// marks its own; OR-ed over the ranks (Communicator::allreduce_or on bits()), every rank holds
/// the same set.
class HostChunks {
 public:
  explicit HostChunks(size_t chunks) : bits_((chunks + 7) / 8, 0) {}
  void mark(int32_t chunk) {
    const auto c = static_cast<size_t>(chunk);
    bits_[c / 8] = static_cast<uint8_t>(bits_[c / 8] | (1u << (c % 8)));
  }
  bool marked(int32_t chunk) const {
    const auto c = static_cast<size_t>(chunk);
    return (bits_[c / 8] >> (c % 8)) & 1u;
  }
  std::vector<uint8_t>& bits() { return bits_; }

  /// A message goes the device route when no rank lands any of its chunks in host memory.
  bool device_route(const LoadPlan& plan, const Message& m) const;

 private:
  std::vector<uint8_t> bits_;
};

/// The device group of `m`: a number drawn from the message itself (its first piece's chunk and
/// first element), so every rank of the message draws the same one from its own share of the
/// plan. Non-negative.
int64_t device_group_id(const LoadPlan& plan, const std::vector<ChunkRecord>& index,
                        const Message& m);

}  // namespace shardload
