// Cutting the needed part of a chunk into boxes that each go to one set of receivers.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "sharding/box.h"

namespace shardload {

/// Cuts the union of `parts` (non-empty boxes inside `chunk`) into disjoint boxes, each labelled
/// with the ascending indices of the parts that contain it, in C order of their first elements;
/// adjacent cells with the same label are merged. Each part marks only the grid cells it covers
/// (the grid of all part boundaries), so the work follows the output, not cells times parts.
std::vector<std::pair<Box, std::vector<int32_t>>> decompose(const Box& chunk,
                                                            const std::vector<Box>& parts);

}  // namespace shardload
