#include "loader/transfer/read.h"

#include <cstring>
#include <utility>

namespace shardload {

void MessageReader::prepare(const Message& m) {
  for (int32_t p : m.pieces) {
    const ChunkRecord& row =
        index_[static_cast<size_t>(plan_.pieces[static_cast<size_t>(p)].chunk)];
    files_.get(row.file).prepare(row);
  }
}

void MessageReader::read_part(const Piece& piece, const ChunkRecord& row, char* into) const {
  Shape in_chunk(piece.box.offset.size());
  for (size_t d = 0; d < in_chunk.size(); ++d) in_chunk[d] = piece.box.offset[d] - row.offset[d];
  files_.get(row.file).read(row, in_chunk, piece.box.shape, into, verify_);
}

int64_t MessageReader::read(const Message& m, char* bytes,
                            const std::vector<char*>& in_place) const {
  int64_t pos = 0, read_bytes = 0;
  std::vector<const ChunkRecord*> run;
  std::vector<std::pair<int64_t, int64_t>> run_places;  // (aligned position, nbytes)
  int32_t run_file = -1;
  auto flush = [&] {
    if (run.empty()) return;
    const int64_t start = run_places.front().first;
    files_.get(run_file).read_chunks(run, bytes + start, verify_);
    // Packed from `start`: move each piece up to its aligned position, last first.
    int64_t packed_end = start;
    for (const auto& [at, n] : run_places) packed_end += n;
    for (size_t k = run_places.size(); k-- > 0;) {
      const auto [at, n] = run_places[k];
      packed_end -= n;
      if (packed_end != at) std::memmove(bytes + at, bytes + packed_end, static_cast<size_t>(n));
    }
    run.clear();
    run_places.clear();
  };
  for (size_t k = 0; k < m.pieces.size(); ++k) {
    pos = aligned_piece_start(pos);
    const Piece& piece = plan_.pieces[static_cast<size_t>(m.pieces[k])];
    const ChunkRecord& row = index_[static_cast<size_t>(piece.chunk)];
    const bool whole_chunk = piece.box.offset == row.offset && piece.box.shape == row.shape;
    char* into = !in_place.empty() && in_place[k] ? in_place[k] : bytes + pos;
    if (into != bytes + pos) {
      flush();
      if (whole_chunk) {
        const ChunkRecord* one[] = {&row};
        files_.get(row.file).read_chunks(one, into, verify_);
      } else {
        read_part(piece, row, into);
      }
    } else if (whole_chunk) {
      if (row.file != run_file) flush();
      run_file = row.file;
      run.push_back(&row);
      run_places.emplace_back(pos, piece.nbytes);
    } else {
      flush();
      read_part(piece, row, bytes + pos);
    }
    pos += piece.nbytes;
    read_bytes += piece.nbytes;
  }
  flush();
  return read_bytes;
}

}  // namespace shardload
