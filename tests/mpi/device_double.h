// A strict CPU double of the device contract (transport/device_transport.h), so that the whole
// device route of the transfer — status words, uploads, grouped deliveries, device-side landings,
// ring reuse, completion markers, the caller's stream — runs in ctest on machines without a GPU,
// with the semantics of the real thing made strict:
//  - every operation is enqueued on a "stream" (a worker thread) and runs later, in order, after
//    a random delay;
//  - grouped deliveries take effect only at group_end(), as NCCL enqueues a group then;
//  - a marker covers exactly the work enqueued before it;
//  - ring buffers are poisoned when retired and when the ring is freed;
//  - landings refuse sources that are not 16-byte aligned (device views need it);
//  - every delivery carries its sender's group number and the receiver checks it against its own
//    (NCCL needs every rank to draw the same groups): a mismatch fails the transfer;
//  - groups are a thread-wide state, as NCCL's are: a group left open by an aborted transfer
//    makes the next communicator set-up fail (where NCCL would wait forever);
//  - finish() stands for the caller's stream: it returns only when all work has finished.
// Installed with install_device_backend(), it treats every CPU tensor as device memory.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "transport/device_transport.h"

namespace shardload::testing {

struct DoubleOptions {
  int max_delay_us = 200;         ///< each operation waits uniformly up to this long first
  bool claim_cpu_tensors = true;  ///< CPU tensors count as device memory (false: none does)
  int fail_open_rank = -1;        ///< open() throws on this rank (a device that cannot be set up)
  int fail_start_rank = -1;       ///< start() throws on this rank ...
  int fail_start_after = 0;       ///< ... after this many successful starts
};

class DeviceDouble : public DeviceBackend {
 public:
  explicit DeviceDouble(DoubleOptions options = {}) : options_(options) {}
  bool holds(const at::Tensor& t) const override {
    return options_.claim_cpu_tensors && t.defined() && t.device().is_cpu();
  }
  int device_of(const at::Tensor&) const override { return 0; }
  RankDevice report(int device, bool wants, bool mixed, const Communicator& comm) override;
  std::shared_ptr<DeviceTransport> open(const Communicator& comm, int device) override;
  void join(DeviceTransport& transport, const Communicator& comm) override;

  /// How often report() ran (the device runtime "started"), groups issued, bytes delivered.
  int reports() const { return reports_; }
  int64_t groups() const { return groups_->load(); }

 private:
  DoubleOptions options_;
  int reports_ = 0;
  std::shared_ptr<std::atomic<int64_t>> groups_ = std::make_shared<std::atomic<int64_t>>(0);
};

/// Installs a DeviceDouble for the scope; restores the default backend after.
class ScopedDeviceDouble {
 public:
  explicit ScopedDeviceDouble(DoubleOptions options = {})
      : double_(std::make_shared<DeviceDouble>(options)) {
    install_device_backend(double_);
  }
  ~ScopedDeviceDouble() { install_device_backend(nullptr); }
  DeviceDouble& operator*() { return *double_; }
  DeviceDouble* operator->() { return double_.get(); }

 private:
  std::shared_ptr<DeviceDouble> double_;
};

}  // namespace shardload::testing
