#include "transport/transport.h"

#include <unistd.h>

#include "core/error.h"
#include "shardload/config.h"

namespace shardload {

#if !SHARDLOAD_WITH_NCCL
std::shared_ptr<Transport> make_nccl_transport(const Communicator&, int) {
  throw CommError("this shardload was built without NCCL");
}

bool nccl_built() { return false; }

RankDevice local_device_report(bool wants_cuda, int device, bool mixed_devices) {
  RankDevice d;
  d.wants_cuda = wants_cuda;
  d.nccl_built = false;
  d.device = device;
  d.mixed_devices = mixed_devices;
  return d;
}
#endif

}  // namespace shardload
