#include "transport/transport_choice.h"

#include <map>

#include "core/error.h"

namespace shardload {

TransportChoice choose_transport(const std::vector<RankDevice>& ranks) {
  TransportChoice out;
  bool any_cuda = false;
  for (const auto& r : ranks) any_cuda = any_cuda || r.wants_cuda;
  if (!any_cuda) {
    out.reason = "no destination tensor is in CUDA memory";
    return out;
  }
  std::map<std::string, int> owner;
  for (size_t i = 0; i < ranks.size(); ++i) {
    const RankDevice& r = ranks[i];
    const std::string who = "rank " + std::to_string(i);
    if (!r.nccl_built) {
      out.reason = who + " runs a build without NCCL";
      return out;
    }
    if (r.device < 0) {
      out.reason = who + " has no visible GPU";
      return out;
    }
    if (r.mixed_devices) {
      out.reason = who + "'s tensors live on more than one GPU";
      return out;
    }
    auto [it, fresh] = owner.emplace(r.gpu_id, static_cast<int>(i));
    if (!fresh) {
      out.reason = "ranks " + std::to_string(it->second) + " and " + std::to_string(i) +
                   " share one GPU (" + r.gpu_id + "), which NCCL refuses";
      return out;
    }
  }
  out.nccl = true;
  return out;
}

std::string serialize_rank_device(const RankDevice& d) {
  std::string s;
  s.push_back(static_cast<char>(d.wants_cuda));
  s.push_back(static_cast<char>(d.nccl_built));
  s.push_back(static_cast<char>(d.mixed_devices));
  const int32_t device = d.device;
  s.append(reinterpret_cast<const char*>(&device), sizeof device);
  s += d.gpu_id;
  return s;
}

RankDevice deserialize_rank_device(const std::string& bytes) {
  if (bytes.size() < 3 + sizeof(int32_t)) throw CommError("malformed device report");
  RankDevice d;
  d.wants_cuda = bytes[0] != 0;
  d.nccl_built = bytes[1] != 0;
  d.mixed_devices = bytes[2] != 0;
  int32_t device = 0;
  bytes.copy(reinterpret_cast<char*>(&device), sizeof device, 3);
  d.device = device;
  d.gpu_id = bytes.substr(3 + sizeof device);
  return d;
}

}  // namespace shardload
