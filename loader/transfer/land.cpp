#include "loader/transfer/land.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "loader/tensor_bytes.h"

namespace shardload {

void copy_past_cache(void* dst, const void* src, size_t n) {
#if defined(__SSE2__)
  if (n >= kPastCacheBytes) {
    auto* d = static_cast<char*>(dst);
    const auto* s = static_cast<const char*>(src);
    // Up to the first cache line of the destination with memcpy, then whole lines streamed (the
    // source may lie anywhere: unaligned loads), then the tail.
    const size_t head = (64 - (reinterpret_cast<uintptr_t>(d) & 63)) & 63;
    std::memcpy(d, s, head);
    d += head;
    s += head;
    n -= head;
    const size_t body = n & ~size_t{63};
    for (size_t i = 0; i < body; i += 64) {
      const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 16));
      const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 32));
      const __m128i e = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i + 48));
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i), a);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 16), b);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 32), c);
      _mm_stream_si128(reinterpret_cast<__m128i*>(d + i + 48), e);
    }
    _mm_sfence();
    std::memcpy(d + body, s + body, n - body);
    return;
  }
#endif
  std::memcpy(dst, src, n);
}

Lander::Lander(const LoadPlan& plan, const std::vector<ChunkRecord>& index, int rank,
               const std::vector<Need>& my_needs, const std::vector<int32_t>& entry_of_need,
               const Partition& partition, DeviceBackend* backend)
    : plan_(plan),
      index_(index),
      rank_(rank),
      needs_(my_needs),
      entry_of_need_(entry_of_need),
      partition_(partition),
      backend_(backend) {
  for (size_t need = 0; need < needs_.size(); ++need) {
    const at::Tensor& t = partition_.entries()[static_cast<size_t>(entry_of_need_[need])].tensor;
    whole_.push_back(t.device().is_cpu() && t.is_contiguous() ? t.data_ptr() : nullptr);
  }
}

at::Tensor Lander::destination(const Piece& piece, int32_t need) const {
  const Need& n = needs_[static_cast<size_t>(need)];
  const PartitionEntry& entry =
      partition_.entries()[static_cast<size_t>(entry_of_need_[static_cast<size_t>(need)])];
  at::Tensor view = entry.tensor;
  if (view.dim() == 0) return view;  // a 0-d tensor (also when loaded from a [1] tensor)
  for (size_t d = 0; d < piece.box.shape.size(); ++d) {
    view = view.narrow(static_cast<int64_t>(d), piece.box.offset[d] - n.region.offset[d],
                       piece.box.shape[d]);
  }
  return view;
}

at::Tensor Lander::direct_destination(const Message& m, bool device) const {
  if (m.pieces.size() != 1) return {};
  const Piece& piece = plan_.pieces[static_cast<size_t>(m.pieces[0])];
  const int32_t need = plan_.need_of(piece, rank_);
  if (need < 0) return {};
  at::Tensor dst = destination(piece, need);
  const ChunkRecord& row = index_[static_cast<size_t>(piece.chunk)];
  const bool right_memory = device ? on_device(dst) : dst.device().is_cpu();
  if (right_memory && dst.is_contiguous() && dst.scalar_type() == scalar_type_of(row.dtype) &&
      dst.nbytes() == static_cast<size_t>(piece.nbytes) && piece.nbytes == m.nbytes) {
    return dst;
  }
  return {};
}

bool Lander::lands_on_device(const Message& m) const {
  bool any = false, all = true;
  for_my_pieces(m, [&](const Piece& piece, int32_t need, int64_t) {
    any = true;
    all = all && on_device(destination(piece, need));
  });
  return any && all;
}

std::vector<char*> Lander::in_place_targets(const Message& m) const {
  std::vector<char*> out;
  bool any = false;
  for (int32_t p : m.pieces) {
    const Piece& piece = plan_.pieces[static_cast<size_t>(p)];
    char* target = nullptr;
    const int32_t need = plan_.need_of(piece, rank_);
    if (piece.nbytes >= kInPlaceBytes && need >= 0) {
      const at::Tensor dst = destination(piece, need);
      const ChunkRecord& row = index_[static_cast<size_t>(piece.chunk)];
      if (dst.device().is_cpu() && dst.is_contiguous() &&
          dst.scalar_type() == scalar_type_of(row.dtype) &&
          dst.nbytes() == static_cast<size_t>(piece.nbytes)) {
        target = static_cast<char*>(dst.data_ptr());
      }
    }
    any = any || target;
    out.push_back(target);
  }
  if (!any) out.clear();
  return out;
}

int64_t Lander::land(const Message& m, const char* bytes,
                     const std::vector<char*>& in_place) const {
  int64_t landed = 0;
  size_t k = 0;
  int64_t pos = 0;
  for (int32_t p : m.pieces) {
    pos = aligned_piece_start(pos);
    const Piece& piece = plan_.pieces[static_cast<size_t>(p)];
    const int64_t at = pos;
    pos += piece.nbytes;
    const bool read_in_place = !in_place.empty() && in_place[k++];
    const int32_t need = plan_.need_of(piece, rank_);
    if (need < 0) continue;
    landed += piece.nbytes;
    if (read_in_place) continue;  // read and verified where it lies
    const ChunkRecord& row = index_[static_cast<size_t>(piece.chunk)];
    const Need& n = needs_[static_cast<size_t>(need)];
    void* whole = whole_[static_cast<size_t>(need)];
    if (whole && row.dtype == n.dtype && piece.box == n.region) {
      // The piece is this rank's whole tensor, as stored: a plain copy (most tensors of a
      // replicated load; no tensor operation per small tensor).
      copy_past_cache(whole, bytes + at, static_cast<size_t>(piece.nbytes));
    } else if (at::Tensor dst = destination(piece, need);
               dst.device().is_cpu() && dst.is_contiguous() && row.dtype == n.dtype) {
      // A contiguous part of the tensor (a slab along its first dimensions), as stored.
      copy_past_cache(dst.data_ptr(), bytes + at, static_cast<size_t>(piece.nbytes));
    } else {
      at::Tensor src = at::from_blob(const_cast<char*>(bytes) + at, piece.box.shape,
                                     at::TensorOptions().dtype(scalar_type_of(row.dtype)));
      dst.copy_(src.view(dst.sizes()));
    }
  }
  return landed;
}

int64_t Lander::land_on_device(const Message& m, const char* bytes, DeviceTransport& device) const {
  int64_t landed = 0;
  for_my_pieces(m, [&](const Piece& piece, int32_t need, int64_t pos) {
    const ChunkRecord& row = index_[static_cast<size_t>(piece.chunk)];
    device.land(destination(piece, need), bytes + pos, scalar_type_of(row.dtype), piece.box.shape);
    landed += piece.nbytes;
  });
  return landed;
}

}  // namespace shardload
