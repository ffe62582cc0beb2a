// The deliver stage of the transfer: a message's status word and bytes from its reader to its
// other receivers. Host bytes go by a Transport (MPI), device bytes by a DeviceTransport (NCCL),
// each message issued in plan order by every rank of it (transport.h's calling contract; the
// driver keeps the order). Each call moves one message one state forward (message.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "loader/transfer/land.h"
#include "loader/transfer/message.h"
#include "loader/transfer/staging_arena.h"
#include "sharding/load_plan.h"
#include "transport/device_transport.h"
#include "transport/transport.h"

namespace shardload {

class Deliverer {
 public:
  /// `status` carries status words and failure notices, `data` host bytes; both null on a
  /// one-rank job (nothing to deliver).
  Deliverer(const LoadPlan& plan, std::unique_ptr<Transport> status,
            std::unique_ptr<Transport> data);

  /// Device messages go by `device`, through a ring of `ring_capacity` bytes of device memory
  /// at `ring` (DeviceTransport::begin).
  void attach_device(std::shared_ptr<DeviceTransport> device, char* ring, int64_t ring_capacity);
  DeviceTransport* device() const { return device_.get(); }

  /// Whether `t` sends its status word on its own before its bytes (two-step and device
  /// messages of several ranks).
  bool announces(const MessageTask& t) const;

  /// kWaiting (a receiver) or kRead (the reader) → kAnnouncing: the status word starts out.
  void announce(MessageTask& t);
  /// kAnnouncing → kAnnounced (good) or kSkipped (the read failed) once the word is here.
  /// Returns whether it moved.
  bool poll_announce(MessageTask& t);

  /// Host routes: the bytes start out (→ kDelivering). kOneStep: the whole buffer, status word
  /// included, from kRead (the reader) or kWaiting. kTwoStep, from kAnnounced: the bytes alone,
  /// from the reader's tensor when it read in place, into a receiver's tensor when it takes them
  /// as stored (MessageTask::direct, from direct_receive()), else through staging.
  void send(MessageTask& t);

  /// The device route, from kAnnounced: the message's device buffer (the tensor itself when it
  /// takes the bytes as stored, else a ring buffer), the reader's upload, its group, and this
  /// rank's landings enqueued (→ kDelivering). False, changing nothing, while the ring is full
  /// (older messages hold it). Adds the bytes it will land to `landed`.
  bool issue_device(MessageTask& t, const Lander& lander, int64_t& landed);

  /// kDelivering: whether this rank's part of the delivery is done (the bytes are here, or
  /// sent; device: landed).
  bool arrived(MessageTask& t);

  /// A final message's ring buffer goes back.
  void release(MessageTask& t);

  /// After a failure: everything in flight ends without waiting.
  void abort();
  /// A failure some rank announced ("" when none); announce this rank's own.
  std::string announced_failure();
  void announce_failure(const std::string& text);
  /// The end of a transfer that ran to its end (device work ordered before the caller's).
  void finish();

 private:
  const LoadPlan& plan_;
  std::unique_ptr<Transport> status_;
  std::unique_ptr<Transport> data_;
  std::shared_ptr<DeviceTransport> device_;
  char* ring_base_ = nullptr;
  OffsetRing ring_;
};

/// Where a receiver (not the reader) of a kTwoStep message takes its bytes: straight into its
/// tensor when the tensor takes them as stored (Lander::direct_destination), else nullptr
/// (staging). Decided when the message's buffer is taken, so that such a receiver stages only
/// the status word.
char* direct_receive(const Lander& lander, const Message& m, Route route, bool reader);

}  // namespace shardload
