#include "loader/snapshot.h"

#include <ATen/Context.h>
#include <ATen/core/CachingHostAllocator.h>
#include <ATen/ops/empty.h>
#include <c10/core/Event.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "loader/tensor_bytes.h"

namespace shardload {
namespace {

constexpr int64_t kAlign = 64;

int64_t aligned(int64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

}  // namespace

std::optional<at::Tensor> SnapshotPool::lease(int64_t bytes, bool pinned, int64_t limit) {
  std::lock_guard<std::mutex> lock(mutex_);
  bytes = std::max<int64_t>(bytes, kAlign);
  int64_t held = 0;
  Slab* best = nullptr;
  for (auto& s : slabs_) {
    held += s.bytes.numel();
    if (!s.leased && s.bytes.is_pinned() == pinned && s.bytes.numel() >= bytes &&
        (!best || s.bytes.numel() < best->bytes.numel())) {
      best = &s;
    }
  }
  if (best && (limit <= 0 || held <= limit)) {
    best->leased = true;
    return best->bytes;
  }
  // A new slab: free slabs go first (a state that grew, a limit that shrank).
  std::erase_if(slabs_, [](const Slab& s) { return !s.leased; });
  held = 0;
  for (const auto& s : slabs_) held += s.bytes.numel();
  if (limit > 0 && held + bytes > limit) return std::nullopt;
  at::Tensor slab = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(pinned));
  slabs_.push_back(Slab{slab, true});
  return slab;
}

void SnapshotPool::give_back(const at::Tensor& slab) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& s : slabs_) {
    if (s.bytes.is_same(slab)) s.leased = false;
  }
}

int64_t SnapshotPool::release_unused() {
  int64_t freed = 0;
  bool pinned = false;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (const auto& s : slabs_) {
      if (s.leased) continue;
      freed += s.bytes.numel();
      pinned = pinned || s.bytes.is_pinned();
    }
    std::erase_if(slabs_, [](const Slab& s) { return !s.leased; });
  }
  // Page-locked memory goes back to LibTorch's host cache when freed; empty it too.
  if (pinned) at::getHostAllocator(at::kCUDA)->empty_cache();
  return freed;
}

int64_t SnapshotPool::held_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  int64_t held = 0;
  for (const auto& s : slabs_) held += s.bytes.numel();
  return held;
}

SnapshotPool& snapshot_pool() {
  static auto* pool = new SnapshotPool();  // never destroyed: a save may outlive main()
  return *pool;
}

int64_t snapshot_bytes(const Partition& partition) {
  int64_t n = 0;
  for (const auto& e : partition.entries()) n += aligned(static_cast<int64_t>(e.tensor.nbytes()));
  return n;
}

bool wants_pinned_memory(const Partition& partition) {
  for (const auto& e : partition.entries()) {
    if (!e.tensor.device().is_cpu()) return at::hasCUDA();
  }
  return false;
}

Partition snapshot_into(const Partition& partition, const at::Tensor& slab) {
  Partition copy = partition;
  auto* base = static_cast<uint8_t*>(slab.data_ptr());
  int64_t offset = 0;
  // Per device: a stream from its pool, ordered after the caller's current stream there.
  struct DeviceCopy {
    c10::impl::VirtualGuardImpl guard;
    c10::Stream stream;
    c10::Event done;
  };
  std::vector<std::pair<c10::Device, std::unique_ptr<DeviceCopy>>> devices;
  for (auto& e : copy.entries()) {
    const at::Tensor& src = e.tensor;
    if (shape_of(src) != e.declaration.local_shape) {
      throw UsageError("key '" + e.key + "': tensor shape changed since it was added");
    }
    const auto nbytes = static_cast<int64_t>(src.nbytes());
    at::Tensor dst = slab.narrow(0, offset, std::max<int64_t>(nbytes, 0))
                         .view(src.scalar_type())
                         .view(src.sizes());
    offset += aligned(nbytes);
    if (nbytes == 0) {
    } else if (src.device().is_cpu() && src.is_contiguous()) {
      std::memcpy(base + dst.storage_offset() * dst.element_size(), src.data_ptr(),
                  static_cast<size_t>(nbytes));
    } else if (src.device().is_cpu()) {
      dst.copy_(src);
    } else {
      auto it = std::find_if(devices.begin(), devices.end(),
                             [&](const auto& p) { return p.first == src.device(); });
      if (it == devices.end()) it = devices.emplace(devices.end(), src.device(), nullptr);
      auto& d = it->second;
      if (!d) {
        c10::impl::VirtualGuardImpl guard(src.device().type());
        c10::Stream stream = guard.getStreamFromGlobalPool(src.device());
        d = std::make_unique<DeviceCopy>(
            DeviceCopy{guard, stream, c10::Event(src.device().type())});
        c10::Event current(src.device().type());
        current.record(guard.getStream(src.device()));
        current.block(stream);
      }
      c10::StreamGuard on(d->stream);
      dst.copy_(src, /*non_blocking=*/true);
    }
    e.tensor = dst;
  }
  for (auto& [device, d] : devices) {
    d->done.record(d->stream);
    d->done.synchronize();
  }
  return copy;
}

}  // namespace shardload
