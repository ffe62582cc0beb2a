#include "transport/transport.h"

#include "shardload/config.h"

namespace shardload {

#if !SHARDLOAD_WITH_NCCL
std::unique_ptr<Transport> make_nccl_transport(const Communicator&) { return nullptr; }
#endif

std::vector<std::unique_ptr<Transport>> make_transports(const Communicator& comm, bool want_cuda) {
  std::vector<std::unique_ptr<Transport>> out;
  if (want_cuda) {
    if (auto nccl = make_nccl_transport(comm)) out.push_back(std::move(nccl));
  }
  out.push_back(make_mpi_transport(comm));
  return out;
}

}  // namespace shardload
