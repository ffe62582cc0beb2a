// The verdict of a load, with PyTorch's load_state_dict(strict=...) meaning (DESIGN.md §6).
#pragma once

#include "loader/load.h"

namespace shardload {

/// Fills the verdict fields of `result` (lists, hints, ok, error) from the plan. Pure: every
/// rank computes the same verdict from the same plan.
void decide_verdict(const LoadPlan& plan, const LoadOptions& options, LoadResult& result);

/// Hints for key sets that differ by a common prefix (DDP's "module."): empty when none.
std::vector<std::string> prefix_hints(const std::vector<std::string>& missing,
                                      const std::vector<std::string>& unexpected);

}  // namespace shardload
