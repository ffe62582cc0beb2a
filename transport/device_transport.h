// The device side of the data plane: moving verified bytes into destination tensors that live in
// device memory, and between the ranks' devices. CUDA + NCCL in production
// (transport/nccl_transport.cpp); a strict CPU double in the tests (tests/mpi/device_double.*).
// The transfer pipeline drives this contract and never names a backend.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "core/shape.h"
#include "transport/transport.h"
#include "transport/transport_choice.h"

namespace shardload {

class Communicator;

/// One rank's device queue and its share of a device communicator, with a device queue's
/// ordering rules: every operation is enqueued and takes effect later, in enqueue order; a
/// marker (a Delivery) is done when everything enqueued before it has finished, and covers
/// nothing enqueued after it.
///
/// Calling contract (as in c10d): grouped operations are issued by every rank they involve in the
/// same groups, in the same order; the caller draws group boundaries from the load plan alone.
/// Operations between group_begin() and group_end() take effect only at group_end() (NCCL puts a
/// group on the stream then), so a group's marker is made by group_end(), never before.
/// Not thread-safe: the transfer's driver thread makes every call.
class DeviceTransport {
 public:
  virtual ~DeviceTransport() = default;
  /// "nccl" (several ranks), "cuda" (one rank: host-to-device copies only), "double" (tests).
  virtual std::string name() const = 0;

  /// Local set-up of one transfer (not collective; the caller reduces its failures): device
  /// memory for a ring of `capacity` message buffers, returned, 16-byte aligned; and the queue
  /// ordered after the work already queued on the caller's current stream (a destination may
  /// still be written by a pending kernel).
  virtual char* begin(int64_t capacity) = 0;
  /// A range of the ring whose work has finished goes back for reuse (the double poisons it).
  virtual void retire(char* data, int64_t nbytes) = 0;

  /// Enqueues a copy of `nbytes` host bytes (page-locked staging that the caller keeps until a
  /// later marker is done) into device memory at `dst`.
  virtual void upload(void* dst, const void* host, int64_t nbytes) = 0;
  /// Opens group `group` (its number in the plan, the same on every rank). Throws when a group
  /// is already open.
  virtual void group_begin(int64_t group) = 0;
  /// Adds to the open group the delivery of `nbytes` at `data` on rank `root` into `data` on the
  /// other ranks of `ranks` (ascending, root included; a one-rank set moves nothing).
  virtual void start(void* data, int64_t nbytes, int root, std::span<const int> ranks) = 0;
  /// Closes the group: its operations are enqueued. Returns their marker.
  virtual std::unique_ptr<Delivery> group_end() = 0;
  /// Enqueues the landing of the bytes at `src` (device memory, 16-byte aligned), elements of
  /// `type` in C order of `shape`, into the destination view `dst`, converting like copy_.
  virtual void land(const at::Tensor& dst, const void* src, at::ScalarType type,
                    const Shape& shape) = 0;
  /// A marker after everything enqueued so far.
  virtual std::unique_ptr<Delivery> mark() = 0;
  /// The end of a transfer that ran to its end: the caller's current stream is ordered after all
  /// the work (the double, whose "stream" is the host, waits for it); the ring is released.
  virtual void finish() = 0;
  /// Ends everything in flight without waiting (after a failure here or on a peer), closing an
  /// open group; the ring is kept (work may still write it). A later begin() works.
  virtual void abort() = 0;
};

/// A kind of device memory and the transports into it.
class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;
  /// Whether `tensor` lives in memory this backend lands into; its device index then.
  virtual bool holds(const at::Tensor& tensor) const = 0;
  virtual int device_of(const at::Tensor& tensor) const = 0;
  /// This rank's part of the transport decision (transport_choice.h), for `device` (-1: this
  /// rank holds no device tensor; the backend picks local_rank % visible devices). It may start
  /// the device runtime: call it only when some rank holds device tensors. Not collective.
  virtual RankDevice report(int device, bool wants, bool mixed, const Communicator& comm) = 0;
  /// This rank's transport on `device`: the local part (device, stream), which may fail alone.
  /// Not collective.
  virtual std::shared_ptr<DeviceTransport> open(const Communicator& comm, int device) = 0;
  /// Joins the transports that open() gave every rank into one communicator (made once per
  /// communicator and device, reused by later transfers). Collective over `comm`.
  virtual void join(DeviceTransport& transport, const Communicator& comm) = 0;
};

/// The backend of device destinations: the one installed (tests), else CUDA + NCCL where this
/// build has it, else nullptr (device destinations then go by host staging and copies).
DeviceBackend* device_backend();
/// Installs `backend` in place of the default (the tests' CPU double); nullptr restores it. Call
/// between loads only.
void install_device_backend(std::shared_ptr<DeviceBackend> backend);
/// The CUDA + NCCL backend of this build, or nullptr (built without NCCL).
DeviceBackend* cuda_backend();

}  // namespace shardload
