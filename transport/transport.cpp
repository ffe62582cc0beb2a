#include <mutex>

#include "shardload/config.h"
#include "transport/device_transport.h"

namespace shardload {
namespace {

std::mutex& backend_mutex() {
  static std::mutex m;
  return m;
}
std::shared_ptr<DeviceBackend>& installed() {
  static std::shared_ptr<DeviceBackend> b;
  return b;
}

}  // namespace

DeviceBackend* device_backend() {
  std::lock_guard<std::mutex> lock(backend_mutex());
  if (installed()) return installed().get();
  return cuda_backend();
}

void install_device_backend(std::shared_ptr<DeviceBackend> backend) {
  std::lock_guard<std::mutex> lock(backend_mutex());
  installed() = std::move(backend);
}

#if !SHARDLOAD_WITH_NCCL
DeviceBackend* cuda_backend() { return nullptr; }
#endif

}  // namespace shardload
