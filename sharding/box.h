// Boxes in a tensor's index space: pure geometry, no files and no ranks.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/shape.h"

namespace shardload {

/// A box (hyper-rectangle) of a global tensor: `offset` and `shape` have one entry per dimension.
/// A 0-d tensor's box has empty offset and shape and holds one element.
struct Box {
  Shape offset;
  Shape shape;

  bool operator==(const Box&) const = default;
};

/// The box covering a whole tensor of shape `global`.
Box full_box(const Shape& global);
/// Number of elements in the box.
int64_t box_numel(const Box& box);
/// The common part of two boxes of the same rank; nullopt when they share no element.
std::optional<Box> intersect(const Box& a, const Box& b);
/// True when every element of `inner` lies in `outer` (an empty inner box always does).
bool contains(const Box& outer, const Box& inner);
/// True when the box lies inside a tensor of shape `global` (same rank, in bounds).
bool inside(const Shape& global, const Box& box);
/// The bounding box of the elements of `region` that no box of `covers` contains; nullopt when
/// they cover it (or the region is empty). Walks the grid of all box boundaries.
std::optional<Box> uncovered_bounds(const Box& region, const std::vector<Box>& covers);
/// Python-like slice text: "[0:4, 2:8]"; "[]" for 0-d.
std::string box_str(const Box& box);

/// Part `index` of `parts` when dimension `dim` of `global` is split as evenly as possible, like
/// numpy.array_split: the first (size % parts) parts get one element more. Parts may be empty.
Box even_split(const Shape& global, int64_t dim, int parts, int index);

/// Cuts `box` into disjoint boxes, in C (row-major) order, each at most `max_bytes` where possible
/// (a single element larger than max_bytes is a piece of its own). Their union is `box`.
/// An empty box gives no pieces; a box that fits gives itself.
std::vector<Box> split_for_budget(const Box& box, int64_t elem_size, int64_t max_bytes);
/// The same pieces, in the same order, handed to `fn` one at a time: no list of them is built
/// (a box of 2^40 one-element pieces costs no memory).
void for_each_budget_piece(const Box& box, int64_t elem_size, int64_t max_bytes,
                           const std::function<void(const Box&)>& fn);

}  // namespace shardload
