#include "io/chunk_bytes.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "core/chunk_record.h"
#include "core/error.h"
#include "io/checksum.h"
#include "io/key_text.h"

namespace shardload {

std::string ChunkBytes::name() const {
  if (dataset.empty()) return "tensor data at byte " + std::to_string(pos);
  std::string s = "chunk " + std::string(dataset);
  if (data_offset) s += " at data offset " + std::to_string(data_offset);
  return s;
}
namespace {

/// Reads of at least this many bytes that can land in place go straight into `dst`; smaller
/// ones share a window read.
constexpr uint64_t kDirectBytes = uint64_t{64} << 10;
/// Without verification, runs this close together are read with one read (the gap is read
/// and dropped) rather than one read each.
constexpr uint64_t kMergeGapBytes = uint64_t{64} << 10;

/// Scratch memory for one read: a per-thread buffer reused across reads (no page faults per
/// read), or its own allocation when a window is unusually large (huge blocks). Page-aligned, as
/// the file's large objects are: the kernel copies into a destination at the source's place in a
/// cache line fastest (loader/transfer/staging_arena.h).
class Scratch {
 public:
  explicit Scratch(uint64_t n) {
    constexpr uint64_t kReused = uint64_t{16} << 20;
    if (n <= kReused) {
      thread_local AlignedBytes buffer;
      thread_local uint64_t size = 0;
      if (size < n) {
        buffer = aligned_bytes(n, 4096);
        size = n;
      }
      data_ = buffer.get();
    } else {
      own_ = aligned_bytes(n, 4096);
      data_ = own_.get();
    }
  }
  char* data() const { return data_; }

 private:
  AlignedBytes own_;
  char* data_ = nullptr;
};

void swap_bytes(char* p, uint64_t n, int64_t elem) {
  switch (elem) {
    case 2:
      for (uint64_t i = 0; i + 2 <= n; i += 2) {
        uint16_t v;
        std::memcpy(&v, p + i, 2);
        v = __builtin_bswap16(v);
        std::memcpy(p + i, &v, 2);
      }
      break;
    case 4:
      for (uint64_t i = 0; i + 4 <= n; i += 4) {
        uint32_t v;
        std::memcpy(&v, p + i, 4);
        v = __builtin_bswap32(v);
        std::memcpy(p + i, &v, 4);
      }
      break;
    case 8:
      for (uint64_t i = 0; i + 8 <= n; i += 8) {
        uint64_t v;
        std::memcpy(&v, p + i, 8);
        v = __builtin_bswap64(v);
        std::memcpy(p + i, &v, 8);
      }
      break;
    default:
      break;
  }
}

std::string range_str(uint64_t a, uint64_t b) {
  return "bytes [" + std::to_string(a) + ", " + std::to_string(b) + ")";
}

[[noreturn]] void mismatch(const ChunkBytes& c, uint64_t a, uint64_t b, const std::string& which) {
  throw FormatError("checksum mismatch: " + range_str(a, b) + " of " + c.name() + " (" +
                    std::to_string(c.nbytes) + " bytes) do not match their " + which +
                    " (the file is corrupt)");
}

/// Checks that bool bytes are 0 or 1; `at` is the chunk offset of data[0] for the message.
void check_bools(const ChunkBytes& c, const char* data, uint64_t n, const std::string& where) {
  if (!c.is_bool) return;
  for (uint64_t i = 0; i < n; ++i) {
    auto v = static_cast<unsigned char>(data[i]);
    if (v > 1) {
      throw FormatError("bool element " + std::to_string(i) + " of " + where + " of " + c.name() +
                        " holds byte value " + std::to_string(v) + " (a bool is 0 or 1)");
    }
  }
}

uint64_t blocks_of(const ChunkBytes& c) { return block_count(c.nbytes, c.block_bytes); }

/// Checks the blocks that lie whole in [start, end) of the chunk, whose bytes are at `data`
/// (data[0] is chunk byte `start`; start is block-aligned, end is aligned or the chunk's end).
void verify_blocks(const ChunkBytes& c, const char* data, uint64_t start, uint64_t end) {
  const uint64_t bb = c.block_bytes;
  const uint64_t n = blocks_of(c);
  for (uint64_t b = start / bb; b < n && b * bb < end; ++b) {
    const uint64_t lo = b * bb, hi = std::min(lo + bb, c.nbytes);
    if (checksum(data + (lo - start), hi - lo) != c.blocks[b]) {
      mismatch(c, lo, hi,
               "block checksum (block " + std::to_string(b) + " of " + std::to_string(n) + ")");
    }
  }
}

/// Bytes [start, end) of a chunk just read to `p`: swapped to little-endian where stored
/// big-endian, then (`verify`) their blocks checked (verify_blocks' bounds).
void finish_blocks(const ChunkBytes& c, char* p, uint64_t start, uint64_t end, bool verify) {
  if (c.byte_swap) swap_bytes(p, end - start, c.elem_size);
  if (verify) verify_blocks(c, p, start, end);
}

/// Bytes read at a time when a read is checked as it goes: half a core's L2 cache here, so that
/// the hash reads what the read just wrote from that cache, not from memory.
constexpr uint64_t kVerifyStepBytes = uint64_t{256} << 10;

/// Reads chunk bytes [start, end) into `dst` (start on a block boundary; end on one or the
/// chunk's end) and checks every block, a step at a time: each step is swapped (if stored
/// big-endian) and hashed right after its read. Blocks larger than a step are hashed in steps
/// (streamed); smaller ones are read and checked several at a time.
void read_blocks_verified(const ChunkBytes& c, uint64_t start, uint64_t end, char* dst) {
  const uint64_t bb = c.block_bytes;
  const uint64_t n = blocks_of(c);
  if (bb <= kVerifyStepBytes) {
    const uint64_t group = kVerifyStepBytes / bb * bb;
    for (uint64_t lo = start; lo < end; lo += group) {
      const uint64_t hi = std::min(lo + group, end);
      char* at = dst + (lo - start);
      c.file->read_at(c.pos + lo, hi - lo, at);
      finish_blocks(c, at, lo, hi, /*verify=*/true);
    }
    return;
  }
  for (uint64_t lo = start; lo < end; lo += bb) {
    const uint64_t hi = std::min(lo + bb, end);
    StreamingChecksum sum;
    for (uint64_t p = lo; p < hi; p += kVerifyStepBytes) {
      const uint64_t e = std::min(p + kVerifyStepBytes, hi);
      char* at = dst + (p - start);
      c.file->read_at(c.pos + p, e - p, at);
      if (c.byte_swap) swap_bytes(at, e - p, c.elem_size);
      sum.update(at, e - p);
    }
    if (sum.digest() != c.blocks[lo / bb]) {
      mismatch(
          c, lo, hi,
          "block checksum (block " + std::to_string(lo / bb) + " of " + std::to_string(n) + ")");
    }
  }
}

/// The contiguous byte runs of a box inside a chunk (C order), in increasing file order: `src`
/// is the run's chunk byte offset, `dst` its offset in the destination.
struct Run {
  uint64_t src = 0, len = 0, dst = 0;
};

class RunCursor {
 public:
  RunCursor(const Shape& chunk, const Shape& offset, const Shape& box, uint64_t elem) {
    const int d = static_cast<int>(chunk.size());
    uint64_t inner = elem;  // bytes of one step along dimension j
    int j = d - 1;
    while (j >= 0 && box[j] == chunk[j]) {
      inner *= static_cast<uint64_t>(chunk[j]);
      --j;
    }
    outer_ = j;  // dimensions 0..j-1 step from run to run; j is partial
    if (j < 0) {
      run_bytes_ = inner;  // the box is the whole chunk
      left_ = 1;
      return;
    }
    run_bytes_ = static_cast<uint64_t>(box[j]) * inner;
    src_ = static_cast<uint64_t>(offset[j]) * inner;
    stride_.assign(static_cast<size_t>(j), 0);
    count_.assign(static_cast<size_t>(j), 0);
    index_.assign(static_cast<size_t>(j), 0);
    uint64_t stride = static_cast<uint64_t>(chunk[j]) * inner;
    left_ = 1;
    for (int i = j - 1; i >= 0; --i) {
      stride_[i] = stride;
      count_[i] = static_cast<uint64_t>(box[i]);
      src_ += static_cast<uint64_t>(offset[i]) * stride;
      left_ *= count_[i];
      stride *= static_cast<uint64_t>(chunk[i]);
    }
  }
  bool whole() const { return outer_ < 0; }
  bool next(Run& r) {
    if (left_ == 0) return false;
    r = Run{src_, run_bytes_, dst_};
    --left_;
    dst_ += run_bytes_;
    for (int i = outer_ - 1; i >= 0; --i) {
      if (++index_[i] < count_[i]) {
        src_ += stride_[i];
        break;
      }
      src_ -= (count_[i] - 1) * stride_[i];
      index_[i] = 0;
    }
    return true;
  }

 private:
  int outer_ = -1;
  uint64_t run_bytes_ = 0, src_ = 0, dst_ = 0, left_ = 0;
  std::vector<uint64_t> stride_, count_, index_;
};

uint64_t align_down(uint64_t x, uint64_t a) { return x / a * a; }
/// Rounds up to a multiple of `a`, but never past the chunk's end (the last block is short).
uint64_t align_up_in(uint64_t x, uint64_t a, uint64_t end) {
  uint64_t r = (x + a - 1) / a * a;
  return std::min(r, end);
}

/// Reads a box run by run: runs (or their block-aligned interiors) of kDirectBytes and more go
/// straight into dst; the rest through a window holding whole aligned units. With `verify`
/// (align = block size) every block read is checked before any of its bytes are placed, and only
/// the blocks the box touches are read.
void read_runs(const ChunkBytes& c, RunCursor cursor, char* dst, bool verify) {
  const uint64_t align = verify ? c.block_bytes : 1;
  const uint64_t gap = verify ? 0 : kMergeGapBytes;
  const uint64_t end_all = c.nbytes;
  uint64_t window = std::max(kReadWindowBytes, align);
  window = std::min((window + align - 1) / align * align, align_up_in(end_all, align, end_all));
  std::unique_ptr<Scratch> scratch;
  auto interior = [&](const Run& r, uint64_t& lo, uint64_t& hi) {
    const uint64_t e = r.src + r.len;
    lo = align_up_in(r.src, align, end_all);
    hi = e == end_all ? e : align_down(e, align);
    return hi > lo && hi - lo >= kDirectBytes;
  };

  Run r;
  bool have = cursor.next(r);
  while (have) {
    uint64_t lo, hi;
    if (interior(r, lo, hi) && lo == r.src) {
      // In place: the run starts on a boundary and covers whole units.
      if (verify) {
        read_blocks_verified(c, lo, hi, dst + r.dst);
      } else {
        c.file->read_at(c.pos + lo, hi - lo, dst + r.dst);
        finish_blocks(c, dst + r.dst, lo, hi, verify);
      }
      r.dst += hi - lo;
      r.len -= hi - lo;
      r.src = hi;
      if (r.len == 0) have = cursor.next(r);
      continue;
    }
    const uint64_t wstart = align_down(r.src, align);
    const uint64_t limit = std::min(wstart + window, end_all);
    uint64_t wend = std::min(align_up_in(r.src + r.len, align, end_all), limit);
    if (interior(r, lo, hi)) {
      wend = std::min(wend, lo);  // only the head; the interior goes in place next
    } else {
      RunCursor look = cursor;
      Run q;
      while (wend < limit && look.next(q)) {
        if (align_down(q.src, align) > wend + gap) break;
        uint64_t qlo, qhi;
        if (interior(q, qlo, qhi)) {
          wend = std::max(wend, std::min(qlo, limit));
          break;
        }
        const uint64_t qend = align_up_in(q.src + q.len, align, end_all);
        wend = std::max(wend, std::min(qend, limit));
      }
    }
    if (!scratch) scratch = std::make_unique<Scratch>(window);
    char* win = scratch->data();
    c.file->read_at(c.pos + wstart, wend - wstart, win);
    finish_blocks(c, win, wstart, wend, verify);
    while (true) {
      const uint64_t e = std::min(r.src + r.len, wend);
      if (e > r.src) std::memcpy(dst + r.dst, win + (r.src - wstart), e - r.src);
      if (r.src + r.len > wend) {
        r.dst += wend - r.src;
        r.len -= wend - r.src;
        r.src = wend;
        break;
      }
      have = cursor.next(r);
      if (!have || r.src >= wend) break;
    }
  }
}

/// Reads a box of a chunk without block checksums, verified: the whole chunk streams through a
/// window into an XXH3 state, the box's runs are copied out as they pass, and the digest is
/// compared at the end.
void stream_box(const ChunkBytes& c, RunCursor cursor, char* dst) {
  const uint64_t window = std::min(kReadWindowBytes, c.nbytes);
  Scratch scratch(window);
  char* win = scratch.data();
  StreamingChecksum sum;
  Run r;
  bool have = cursor.next(r);
  for (uint64_t p = 0; p < c.nbytes; p += window) {
    const uint64_t e = std::min(p + window, c.nbytes);
    c.file->read_at(c.pos + p, e - p, win);
    if (c.byte_swap) swap_bytes(win, e - p, c.elem_size);
    sum.update(win, e - p);
    while (have && r.src < e) {
      const uint64_t ce = std::min(r.src + r.len, e);
      std::memcpy(dst + r.dst, win + (r.src - p), ce - r.src);
      if (r.src + r.len > e) {
        r.dst += e - r.src;
        r.len -= e - r.src;
        r.src = e;
        break;
      }
      have = cursor.next(r);
    }
  }
  if (sum.digest() != c.checksum) mismatch(c, 0, c.nbytes, "chunk checksum");
}

void check_box(const ChunkBytes& c, const Shape& chunk_shape, const Shape& offset,
               const Shape& shape) {
  bool ok = offset.size() == chunk_shape.size() && shape.size() == chunk_shape.size();
  for (size_t d = 0; ok && d < chunk_shape.size(); ++d) {
    ok = offset[d] >= 0 && shape[d] >= 0 && offset[d] <= chunk_shape[d] - shape[d];
  }
  if (!ok) {
    throw UsageError("box at " + shape_str(offset) + " of shape " + shape_str(shape) +
                     " does not lie inside " + c.name() + " of shape " + shape_str(chunk_shape));
  }
  if (byte_size(chunk_shape, c.elem_size) != static_cast<int64_t>(c.nbytes)) {
    throw FormatError(c.name() + ": shape " + shape_str(chunk_shape) + " does not take " +
                      std::to_string(c.nbytes) + " bytes");
  }
}

}  // namespace

void finish_in_place(const ChunkBytes& c, void* data, bool verify) {
  char* p = static_cast<char*>(data);
  if (c.byte_swap) swap_bytes(p, c.nbytes, c.elem_size);
  if (verify) {
    if (c.block_bytes) {
      verify_blocks(c, p, 0, c.nbytes);
    } else if (checksum(p, c.nbytes) != c.checksum) {
      mismatch(c, 0, c.nbytes, "chunk checksum");
    }
  }
  check_bools(c, p, c.nbytes, "the chunk");
}

void read_whole(const ChunkBytes& c, void* dst, bool verify) {
  if (verify && c.block_bytes) {
    read_blocks_verified(c, 0, c.nbytes, static_cast<char*>(dst));
    check_bools(c, static_cast<const char*>(dst), c.nbytes, "the chunk");
    return;
  }
  c.file->read_at(c.pos, c.nbytes, dst);
  finish_in_place(c, dst, verify);
}

void read_box(const ChunkBytes& c, const Shape& chunk_shape, const Shape& offset,
              const Shape& shape, void* dst, bool verify) {
  check_box(c, chunk_shape, offset, shape);
  const int64_t n = byte_size(shape, c.elem_size);
  if (n == 0) return;
  RunCursor cursor(chunk_shape, offset, shape, static_cast<uint64_t>(c.elem_size));
  if (cursor.whole()) return read_whole(c, dst, verify);
  char* out = static_cast<char*>(dst);
  if (!verify || c.block_bytes) {
    read_runs(c, cursor, out, verify);
  } else {
    stream_box(c, cursor, out);
  }
  check_bools(c, out, static_cast<uint64_t>(n), "the box read");
}

void verify_streaming(const ChunkBytes& c) {
  const uint64_t align = c.block_bytes ? c.block_bytes : 8;
  uint64_t window = std::max(kReadWindowBytes, align) / align * align;
  window = std::min(window, c.nbytes);
  if (window == 0) {
    if (checksum(nullptr, 0) != c.checksum) mismatch(c, 0, 0, "chunk checksum");
    return;
  }
  Scratch scratch(window);
  char* win = scratch.data();
  StreamingChecksum sum;
  for (uint64_t p = 0; p < c.nbytes; p += window) {
    const uint64_t e = std::min(p + window, c.nbytes);
    c.file->read_at(c.pos + p, e - p, win);
    if (c.byte_swap) swap_bytes(win, e - p, c.elem_size);
    if (c.block_bytes) verify_blocks(c, win, p, e);
    check_bools(c, win, e - p, range_str(p, e));
    sum.update(win, e - p);
  }
  if (sum.digest() != c.checksum) mismatch(c, 0, c.nbytes, "chunk checksum");
}

void read_byte_ranges(const FileBytes& file, std::span<const ChunkRecord* const> rows,
                      std::span<const uint64_t> pos, void* dst,
                      const std::function<void(size_t, char*)>& each) {
  char* out = static_cast<char*>(dst);
  size_t i = 0;
  while (i < rows.size()) {
    // One read for a run of rows that follow each other in the file (empty rows join any), up to
    // a step of kVerifyStepBytes: `each` checks them while they are in the core's cache.
    size_t j = i;
    uint64_t start = 0, end = 0;
    bool any = false;
    for (; j < rows.size(); ++j) {
      if (rows[j]->nbytes == 0) continue;
      if (!any) {
        start = end = pos[j];
        any = true;
      } else if (pos[j] != end || end - start >= kVerifyStepBytes) {
        break;
      }
      end = checked_add(end, rows[j]->nbytes, "data_offset + nbytes");
    }
    if (any) {
      try {
        file.read_at(start, end - start, out);
      } catch (...) {
        rethrow_with_context("reading key " + quote_text(rows[i]->key) + " and " +
                             std::to_string(j - i - 1) + " chunks after it: ");
      }
    }
    for (; i < j; ++i) {
      each(i, out);
      out += rows[i]->nbytes;
    }
  }
}

}  // namespace shardload
