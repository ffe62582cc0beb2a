// Which backend moves the bytes of a load: a pure decision over what every rank reports, so
// that every rank takes the same one (NCCL set-up is collective) and it can be tested on a CPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shardload {

/// What one rank reports about itself before a load's transfer.
struct RankDevice {
  bool wants_cuda = false;     ///< some of its destination tensors live in CUDA memory
  bool nccl_built = false;     ///< this build has the NCCL backend
  int device = -1;             ///< the CUDA device it would use (-1: none visible)
  bool mixed_devices = false;  ///< its CUDA tensors live on more than one device
  std::string gpu_id;          ///< a machine-wide identity of that device (PCI bus id + host)
};

/// The decision, identical on every rank.
struct TransportChoice {
  bool nccl = false;   ///< CUDA-to-CUDA messages go over NCCL; everything else over MPI
  std::string reason;  ///< why NCCL was not chosen ("" when it was)
};

/// NCCL when some rank wants CUDA destinations, the build has NCCL everywhere, every rank has
/// one device of its own (NCCL refuses two ranks on one GPU) and no rank's tensors span several
/// devices; MPI (with host-to-device copies on the receivers) otherwise, saying why.
TransportChoice choose_transport(const std::vector<RankDevice>& ranks);

/// Compact wire form of a RankDevice, for the allgather that precedes the decision.
std::string serialize_rank_device(const RankDevice& d);
RankDevice deserialize_rank_device(const std::string& bytes);

}  // namespace shardload
