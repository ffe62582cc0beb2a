#include "loader/transfer/route.h"

namespace shardload {

const char* state_name(MessageState state) {
  switch (state) {
    case MessageState::kWaiting:
      return "waiting";
    case MessageState::kRead:
      return "read";
    case MessageState::kAnnouncing:
      return "announcing";
    case MessageState::kAnnounced:
      return "announced";
    case MessageState::kDelivering:
      return "delivering";
    case MessageState::kLanded:
      return "landed";
    case MessageState::kSkipped:
      return "skipped";
  }
  return "?";
}

Route host_route(const LoadPlan& plan, const Message& m) {
  if (plan.ranks_of(m).size() == 1) return Route::kLocal;
  if (m.pieces.size() == 1 && m.nbytes >= kTwoStepBytes) return Route::kTwoStep;
  return Route::kOneStep;
}

bool HostChunks::device_route(const LoadPlan& plan, const Message& m) const {
  for (int32_t p : m.pieces) {
    if (marked(plan.pieces[static_cast<size_t>(p)].chunk)) return false;
  }
  return true;
}

int64_t device_group_id(const LoadPlan& plan, const std::vector<ChunkRecord>& index,
                        const Message& m) {
  const Piece& first = plan.pieces[static_cast<size_t>(m.pieces.front())];
  const ChunkRecord& row = index[static_cast<size_t>(first.chunk)];
  uint64_t element = 0;
  for (size_t d = 0; d < row.shape.size(); ++d) {
    element = element * static_cast<uint64_t>(row.shape[d]) +
              static_cast<uint64_t>(first.box.offset[d] - row.offset[d]);
  }
  const uint64_t id = static_cast<uint64_t>(first.chunk) * 0x9e3779b97f4a7c15ull + element;
  return static_cast<int64_t>(id >> 1);
}

}  // namespace shardload
