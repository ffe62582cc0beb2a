// The exchange of every rank's partition declarations (what each rank holds or needs).
#pragma once

#include <vector>

#include "sharding/save_plan.h"
#include "transport/communicator.h"

namespace shardload {

/// Every rank's declarations, indexed by rank (one allgather). Collective.
std::vector<std::vector<Declaration>> exchange_declarations(const Communicator& comm,
                                                            const std::vector<Declaration>& mine);

}  // namespace shardload
