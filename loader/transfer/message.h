// One message of the load plan on its way through this rank's transfer: its route, its state and
// the buffers it holds. The stages (read.h, deliver.h, land.h) move a message forward; the
// driver (transfer.cpp) decides when.
#pragma once

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "loader/transfer/read_stage.h"
#include "sharding/load_plan.h"
#include "transport/transport.h"

namespace shardload {

/// Every message buffer starts with the reader's status word (0: the bytes are good), padded so
/// that the bytes after it start on a cache line, as the buffer does (kRingAlign).
constexpr int64_t kStatusBytes = 64;
/// Of those, the bytes of the word itself: what an announcement sends.
constexpr int64_t kStatusWordBytes = 8;
static_assert(kStatusWordBytes == sizeof(uint64_t) && kStatusWordBytes <= kStatusBytes);

/// How a message moves (route.h decides; every rank of the message decides the same).
enum class Route : uint8_t {
  kLocal,    ///< this rank is its only receiver, host memory: read and land
  kOneStep,  ///< status word and bytes in one MPI delivery, landed from staging
  kTwoStep,  ///< the status first, then the bytes by MPI, straight into a tensor where possible
  kDevice,   ///< every receiver lands it in device memory: the status by MPI (several ranks),
             ///< then the bytes uploaded by the reader and delivered by the device transport
};

/// Where a message is on this rank. A message only moves forward:
///
///   kWaiting ─► kRead ─► kAnnouncing ─► kAnnounced ─► kDelivering ─► kLanded
///
/// skipping the states its route and role do not have (route.h: next steps by route), and
/// ending in kSkipped instead of kLanded when its read failed. Both ends are final: the
/// message's buffers can go once the plan-order cursors have passed it.
enum class MessageState : uint8_t {
  kWaiting,     ///< its buffer is taken; the reader's read is queued or running (the reader),
                ///< or nothing of it has arrived yet (the other receivers)
  kRead,        ///< the reader's read has finished: the status word says how, and the
                ///< reader's own host copy is landed
  kAnnouncing,  ///< its status word is on its way (two-step and device, several ranks)
  kAnnounced,   ///< the status word is known here and says the bytes are good; none sent yet
  kDelivering,  ///< its bytes are on their way: an MPI delivery or its device group
  kLanded,      ///< every piece this rank receives of it is in the tensors (final)
  kSkipped,     ///< its read failed: nothing of it lands anywhere (final)
};

/// "waiting", "read", ...: for messages and tests.
const char* state_name(MessageState state);

inline bool is_final(MessageState s) {
  return s == MessageState::kLanded || s == MessageState::kSkipped;
}

/// What landing a message's bytes on this rank did: the bytes landed, or why it failed (this
/// rank's failure; the bytes are good for the others).
struct Landing {
  int64_t bytes = 0;
  ErrorKind kind = ErrorKind::kNone;
  std::string error;
};

/// One message of this rank in flight.
struct MessageTask {
  const Message* message = nullptr;
  size_t number = 0;  ///< position in the plan's message list
  Route route = Route::kLocal;
  MessageState state = MessageState::kWaiting;
  bool reader = false;   ///< this rank reads it
  int64_t offset = 0;    ///< of its host buffer in the staging arena
  char* base = nullptr;  ///< its host buffer: the status word, then the bytes (if staged)
  ReadJob read;          ///< the reader's read (reader threads)
  std::unique_ptr<Delivery> status;  ///< its status word in flight
  std::unique_ptr<Delivery> data;    ///< its bytes in flight (MPI)
  /// Where the bytes arrive when not in staging: this rank's tensor (a one-piece message whose
  /// destination takes them as stored), or nullptr.
  char* direct = nullptr;
  /// The reader's own tensor, when it reads a one-piece message in place
  /// (TransferOptions::read_in_place); the bytes are sent from there.
  char* in_place = nullptr;
  /// Where each piece of a message this rank alone receives is read in place (or nullptr: into
  /// staging); empty when none is.
  std::vector<char*> pieces_in_place;
  /// Whether the reader thread lands this rank's own copy right after the read, while the bytes
  /// are still in its cache (host destinations); then `read_landing` is how that went.
  bool land_on_read = false;
  Landing read_landing;
  // The device route.
  int64_t group = -1;                ///< its device group (numbered by the message, route.h)
  char* device = nullptr;            ///< where its bytes are on the device (ring or tensor)
  int64_t ring_offset = -1;          ///< of its ring buffer (-1: none)
  std::unique_ptr<Delivery> landed;  ///< its group's marker: every landing of the group done

  /// The bytes after the status word in its host buffer.
  char* staged() const { return base + kStatusBytes; }
  /// The status word in its host buffer: true when it says the bytes are good.
  bool status_good() const {
    uint64_t word;
    std::memcpy(&word, base, sizeof word);
    return word == 0;
  }
  void set_status(bool good) {
    const uint64_t word = good ? 0 : 1;
    std::memcpy(base, &word, sizeof word);
  }
};

}  // namespace shardload
