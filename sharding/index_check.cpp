#include "sharding/index_check.h"

#include <algorithm>
#include <iterator>
#include <map>

#include "core/error.h"
#include "sharding/box.h"
#include "sharding/key_table.h"

namespace shardload {
namespace {

std::string quoted(const std::string& key) { return "key '" + key + "'"; }

Box chunk_box(const ChunkRecord& c) { return Box{c.offset, c.shape}; }

/// Pairs of boxes compared by the general overlap check (chunks varying along three or more
/// dimensions) before it gives up: far more than any real layout needs.
constexpr int64_t kOverlapWorkBudget = int64_t{1} << 24;

/// Finds two overlapping chunks of one key and throws naming them; `chunks` index into `index`.
class OverlapCheck {
 public:
  OverlapCheck(const std::vector<ChunkRecord>& index, const std::vector<std::string>& files,
               const std::string& key)
      : index_(index), files_(files), key_(key) {}

  void run(std::vector<size_t> chunks) {
    if (chunks.size() < 2) return;
    // Empty chunks hold no element and overlap nothing.
    std::erase_if(chunks, [&](size_t i) { return numel(index_[i].shape) == 0; });
    if (chunks.size() < 2) return;
    // Dimensions along which the chunks differ; along the others every pair overlaps.
    const ChunkRecord& first = index_[chunks[0]];
    std::vector<size_t> varying;
    for (size_t d = 0; d < first.shape.size(); ++d) {
      for (size_t i : chunks) {
        if (index_[i].offset[d] != first.offset[d] || index_[i].shape[d] != first.shape[d]) {
          varying.push_back(d);
          break;
        }
      }
    }
    if (varying.empty()) return report(chunks[0], chunks[1]);
    if (varying.size() == 1) return along_one(chunks, varying[0]);
    if (varying.size() == 2) return along_two(chunks, varying[0], varying[1]);
    general(chunks, varying);
  }

 private:
  int64_t lo(size_t i, size_t d) const { return index_[i].offset[d]; }
  int64_t hi(size_t i, size_t d) const { return index_[i].offset[d] + index_[i].shape[d]; }

  [[noreturn]] void report(size_t a, size_t b) const {
    if (b < a) std::swap(a, b);
    const ChunkRecord& ca = index_[a];
    const ChunkRecord& cb = index_[b];
    throw FormatError(quoted(key_) + ": chunk " + box_str(chunk_box(ca)) + " in " +
                      files_[static_cast<size_t>(ca.file)] + " overlaps chunk " +
                      box_str(chunk_box(cb)) + " in " + files_[static_cast<size_t>(cb.file)]);
  }

  /// Intervals on a line: sorted by start, each must begin at or after the furthest end so far.
  void along_one(std::vector<size_t> chunks, size_t d) const {
    std::sort(chunks.begin(), chunks.end(),
              [&](size_t a, size_t b) { return lo(a, d) < lo(b, d); });
    size_t furthest = chunks[0];
    for (size_t k = 1; k < chunks.size(); ++k) {
      if (lo(chunks[k], d) < hi(furthest, d)) report(furthest, chunks[k]);
      if (hi(chunks[k], d) > hi(furthest, d)) furthest = chunks[k];
    }
  }

  /// Rectangles: a sweep along x with the active y-intervals in an ordered map. The active ones
  /// are disjoint (else an overlap was reported), so a new one overlaps one of them exactly when
  /// it overlaps its neighbour on either side. Ends are processed before starts at equal x.
  void along_two(const std::vector<size_t>& chunks, size_t x, size_t y) const {
    struct Event {
      int64_t at;
      bool start;
      size_t chunk;
    };
    std::vector<Event> events;
    events.reserve(chunks.size() * 2);
    for (size_t i : chunks) {
      events.push_back({lo(i, x), true, i});
      events.push_back({hi(i, x), false, i});
    }
    std::sort(events.begin(), events.end(), [](const Event& a, const Event& b) {
      return a.at != b.at ? a.at < b.at : (!a.start && b.start);
    });
    std::map<int64_t, size_t> active;  // y start -> chunk
    for (const Event& e : events) {
      const size_t i = e.chunk;
      if (!e.start) {
        active.erase(lo(i, y));
        continue;
      }
      auto next = active.lower_bound(lo(i, y));
      if (next != active.end() && lo(next->second, y) < hi(i, y)) report(next->second, i);
      if (next != active.begin()) {
        auto prev = std::prev(next);
        if (hi(prev->second, y) > lo(i, y)) report(prev->second, i);
      }
      active.emplace(lo(i, y), i);
    }
  }

  /// Three or more varying dimensions (no real layout): a sweep along the first, each new chunk
  /// compared with the active ones, within a work budget.
  void general(std::vector<size_t> chunks, const std::vector<size_t>& dims) const {
    const size_t x = dims[0];
    std::sort(chunks.begin(), chunks.end(),
              [&](size_t a, size_t b) { return lo(a, x) < lo(b, x); });
    std::vector<size_t> active;
    int64_t work = 0;
    for (size_t i : chunks) {
      std::erase_if(active, [&](size_t a) { return hi(a, x) <= lo(i, x); });
      work += static_cast<int64_t>(active.size()) + 1;
      if (work > kOverlapWorkBudget) {
        throw FormatError(quoted(key_) + ": its " + std::to_string(chunks.size()) +
                          " chunks vary along " + std::to_string(dims.size()) +
                          " dimensions; checking them for overlaps exceeds the work limit (" +
                          std::to_string(kOverlapWorkBudget) + " comparisons)");
      }
      for (size_t a : active) {
        bool overlap = true;
        for (size_t d : dims) overlap = overlap && lo(a, d) < hi(i, d) && lo(i, d) < hi(a, d);
        if (overlap) report(a, i);
      }
      active.push_back(i);
    }
  }

  const std::vector<ChunkRecord>& index_;
  const std::vector<std::string>& files_;
  const std::string& key_;
};

}  // namespace

void sort_by_saved_order(std::vector<ChunkRecord>& index) {
  struct Place {
    int64_t order;
    int32_t file;
    int32_t at;
    bool operator<(const Place& o) const {
      return order != o.order ? order < o.order : file != o.file ? file < o.file : at < o.at;
    }
  };
  std::vector<Place> places(index.size());
  std::vector<size_t> run_starts{0};
  for (size_t i = 0; i < index.size(); ++i) {
    places[i] = Place{index[i].order, index[i].file, static_cast<int32_t>(i)};
    if (i > 0 && places[i] < places[i - 1]) run_starts.push_back(i);
  }
  if (run_starts.size() == 1) return;  // sorted already
  constexpr size_t kMergeRuns = 64;
  if (run_starts.size() > kMergeRuns) {
    std::sort(places.begin(), places.end());
  } else {
    // Neighbouring runs merged pairwise, log2(runs) rounds.
    run_starts.push_back(places.size());
    while (run_starts.size() > 2) {
      std::vector<size_t> merged;
      for (size_t r = 0; r + 1 < run_starts.size(); r += 2) {
        merged.push_back(run_starts[r]);
        if (r + 2 < run_starts.size()) {
          const auto base = places.begin();
          std::inplace_merge(base + static_cast<std::ptrdiff_t>(run_starts[r]),
                             base + static_cast<std::ptrdiff_t>(run_starts[r + 1]),
                             base + static_cast<std::ptrdiff_t>(run_starts[r + 2]));
        }
      }
      merged.push_back(places.size());
      run_starts = std::move(merged);
    }
  }
  std::vector<ChunkRecord> sorted;
  sorted.reserve(index.size());
  for (const Place& p : places) sorted.push_back(std::move(index[static_cast<size_t>(p.at)]));
  index = std::move(sorted);
}

void validate_index(const std::vector<ChunkRecord>& index,
                    const std::vector<std::string>& file_names) {
  auto file_of = [&](const ChunkRecord& c) { return file_names[c.file]; };
  // Keys interned once (views into the index): the chunks of key k are those with key_of == k.
  KeyTable key_id(index.size());
  std::vector<int32_t> key_of(index.size());
  std::vector<size_t> first_of_key;  // each key's first chunk, in order of first appearance
  for (size_t i = 0; i < index.size(); ++i) {
    if (i + KeyTable::kPrefetchAhead < index.size())
      key_id.prefetch(index[i + KeyTable::kPrefetchAhead].key);
    const ChunkRecord& c = index[i];
    if (c.file < 0 || static_cast<size_t>(c.file) >= file_names.size()) {
      throw FormatError(quoted(c.key) + ": chunk '" + c.dataset + "' refers to shard file " +
                        std::to_string(c.file) + ", but the checkpoint has " +
                        std::to_string(file_names.size()) + " shard files");
    }
    // Messages are built only on failure: this loop runs once per chunk of a large index.
    auto where = [&] { return " in " + file_of(c); };
    if (c.offset.size() != c.global_shape.size() || c.shape.size() != c.global_shape.size()) {
      throw FormatError(quoted(c.key) + ": chunk" + where() + " has offset " + shape_str(c.offset) +
                        " and shape " + shape_str(c.shape) + " for global shape " +
                        shape_str(c.global_shape) + ": the numbers of dimensions differ");
    }
    bool in_bounds = true;
    for (size_t d = 0; d < c.global_shape.size(); ++d) {
      if (c.global_shape[d] < 0) {
        throw FormatError(quoted(c.key) + ": chunk" + where() + " has global shape " +
                          shape_str(c.global_shape) + " with a negative extent");
      }
      in_bounds = in_bounds && c.offset[d] >= 0 && c.shape[d] >= 0 &&
                  c.offset[d] <= c.global_shape[d] - c.shape[d];
    }
    if (!in_bounds) {
      throw FormatError(quoted(c.key) + ": chunk " + box_str(chunk_box(c)) + where() +
                        " lies outside global shape " + shape_str(c.global_shape));
    }
    uint64_t expect = 0;
    try {
      numel(c.global_shape);  // the whole tensor's element count must fit in int64
      expect = static_cast<uint64_t>(byte_size(c.shape, dtype_size(c.dtype)));
    } catch (...) {
      rethrow_with_context(quoted(c.key) + ": chunk" + where() + ": ");
    }
    if (c.nbytes != expect) {
      throw FormatError(quoted(c.key) + ": chunk " + box_str(chunk_box(c)) + where() + " records " +
                        std::to_string(c.nbytes) + " bytes, but " + shape_str(c.shape) + " of " +
                        std::string(dtype_name(c.dtype)) + " takes " + std::to_string(expect));
    }
    const auto [id, fresh] = key_id.try_emplace(c.key, static_cast<int32_t>(first_of_key.size()));
    key_of[i] = id;
    if (fresh) first_of_key.push_back(i);
    if (!fresh) {
      const ChunkRecord& f = index[first_of_key[static_cast<size_t>(id)]];
      if (f.dtype != c.dtype || f.global_shape != c.global_shape) {
        const std::string pair = quoted(c.key) + ": chunk in " + file_of(f) + " has ";
        const std::string other = ", chunk" + where() + " has ";
        if (f.dtype != c.dtype) {
          throw FormatError(pair + "dtype " + std::string(dtype_name(f.dtype)) + other +
                            std::string(dtype_name(c.dtype)));
        }
        throw FormatError(pair + "global shape " + shape_str(f.global_shape) + other +
                          shape_str(c.global_shape));
      }
    }
  }
  // The chunks of each key with more than one, back to back (a counting sort by key).
  std::vector<size_t> start(first_of_key.size() + 1, 0);
  for (int32_t k : key_of) ++start[static_cast<size_t>(k) + 1];
  for (size_t k = 0; k < first_of_key.size(); ++k) start[k + 1] += start[k];
  std::vector<size_t> chunks(index.size()), fill(start.begin(), start.end() - 1);
  for (size_t i = 0; i < index.size(); ++i) chunks[fill[static_cast<size_t>(key_of[i])]++] = i;
  // O(n log n) per key for chunks that vary along at most two dimensions (every real layout).
  for (size_t k = 0; k < first_of_key.size(); ++k) {
    if (start[k + 1] - start[k] < 2) continue;
    OverlapCheck(index, file_names, index[first_of_key[k]].key)
        .run(std::vector<size_t>(chunks.begin() + static_cast<std::ptrdiff_t>(start[k]),
                                 chunks.begin() + static_cast<std::ptrdiff_t>(start[k + 1])));
  }
}

}  // namespace shardload
