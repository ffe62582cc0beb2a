#include "loader/transfer/deliver.h"

#include "core/error.h"

namespace shardload {

Deliverer::Deliverer(const LoadPlan& plan, std::unique_ptr<Transport> status,
                     std::unique_ptr<Transport> data)
    : plan_(plan), status_(std::move(status)), data_(std::move(data)) {}

void Deliverer::attach_device(std::shared_ptr<DeviceTransport> device, char* ring,
                              int64_t ring_capacity) {
  device_ = std::move(device);
  ring_base_ = ring;
  ring_ = OffsetRing(ring_capacity);
}

bool Deliverer::announces(const MessageTask& t) const {
  return (t.route == Route::kTwoStep || t.route == Route::kDevice) &&
         plan_.ranks_of(*t.message).size() > 1;
}

void Deliverer::announce(MessageTask& t) {
  t.status =
      status_->start(t.base, kStatusWordBytes, t.message->reader, plan_.ranks_of(*t.message));
  t.state = MessageState::kAnnouncing;
}

bool Deliverer::poll_announce(MessageTask& t) {
  if (!t.status->test()) return false;
  t.status.reset();
  t.state = t.status_good() ? MessageState::kAnnounced : MessageState::kSkipped;
  return true;
}

void Deliverer::send(MessageTask& t) {
  const Message& m = *t.message;
  if (t.route == Route::kOneStep) {
    t.data = data_->start(t.base, static_cast<size_t>(kStatusBytes + m.nbytes), m.reader,
                          plan_.ranks_of(m));
  } else {
    void* into = t.in_place ? t.in_place : t.direct ? t.direct : t.staged();
    t.data = data_->start(into, static_cast<size_t>(m.nbytes), m.reader, plan_.ranks_of(m));
  }
  t.state = MessageState::kDelivering;
}

bool Deliverer::issue_device(MessageTask& t, const Lander& lander, int64_t& landed) {
  const Message& m = *t.message;
  if (!t.device) {
    if (at::Tensor dst = lander.direct_destination(m, /*device=*/true); dst.defined()) {
      t.direct = static_cast<char*>(dst.data_ptr());
      t.device = t.direct;
    } else {
      auto offset = ring_.allocate(m.nbytes);
      if (!offset) return false;  // older messages still hold the ring
      t.ring_offset = *offset;
      t.device = ring_base_ + *offset;
    }
  }
  // The reader's verified bytes go up first; the group's delivery follows on the same queue.
  if (t.reader) device_->upload(t.device, t.staged(), m.nbytes);
  device_->group_begin(t.group);
  device_->start(t.device, m.nbytes, m.reader, plan_.ranks_of(m));
  std::unique_ptr<Delivery> delivered = device_->group_end();
  landed += t.direct ? m.nbytes : lander.land_on_device(m, t.device, *device_);
  t.landed = device_->mark();
  t.state = MessageState::kDelivering;
  return true;
}

bool Deliverer::arrived(MessageTask& t) {
  if (t.route == Route::kDevice) return t.landed->test();
  return !t.data || t.data->test();
}

void Deliverer::release(MessageTask& t) {
  if (t.ring_offset < 0) return;
  const int64_t size = ring_.release(t.ring_offset);
  device_->retire(ring_base_ + t.ring_offset, size);
  t.ring_offset = -1;
}

void Deliverer::abort() {
  if (device_) device_->abort();
  if (status_) status_->abort();
  if (data_) data_->abort();
}

std::string Deliverer::announced_failure() {
  return status_ ? status_->announced_failure() : std::string();
}

void Deliverer::announce_failure(const std::string& text) {
  if (status_) status_->announce_failure(text);
}

void Deliverer::finish() {
  if (device_) device_->finish();
}

char* direct_receive(const Lander& lander, const Message& m, Route route, bool reader) {
  if (reader || route != Route::kTwoStep) return nullptr;
  const at::Tensor dst = lander.direct_destination(m, /*device=*/false);
  return dst.defined() ? static_cast<char*>(dst.data_ptr()) : nullptr;
}

}  // namespace shardload
