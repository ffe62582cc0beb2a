// Reading the tensors a torch.save archive holds, as pt_layout.h found them: views of a storage
// at a file position (contiguous ones are byte ranges, any other is gathered from the part of
// its storage it spans). For both readers of torch.save archives: PtReader (a .pt file) and
// DcpReader (each item of a DCP data file).
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "core/chunk_record.h"
#include "core/shape.h"
#include "io/file_bytes.h"
#include "io/pt_layout.h"

namespace shardload {

/// Reads the box (offset, shape) of the view `t` of `file` into `dst` (C order): a contiguous
/// view's box as the hyperslab of a byte range, any other from the part of the storage the box
/// spans, read once, the bool bytes it covers checked, its elements gathered. UsageError for a box
/// outside the tensor.
void read_pt_box(const FileBytes& file, const PtTensor& t, const Shape& offset, const Shape& shape,
                 void* dst);
/// The read_chunks of a reader whose rows are views of `file`, each prepared (`view(row)`
/// returns it): whole views back to back into `dst`; runs of contiguous ones are byte ranges
/// read together (read_byte_ranges), their bool values checked, any other gathered. Errors name
/// the key; the caller adds the file.
void read_pt_views(const FileBytes& file, std::span<const ChunkRecord* const> rows,
                   const std::function<const PtTensor&(const ChunkRecord&)>& view, void* dst);
/// The bytes of the storage the view spans, first element to last (a stride-0 expansion: few).
uint64_t pt_stored_bytes(const PtTensor& t);
/// Reads the view's stored bytes through bounded memory: bool values checked (exactly the
/// bytes it covers), anything else only found inside the file. FormatError naming the byte.
void verify_pt_tensor(const FileBytes& file, const PtTensor& t);

}  // namespace shardload
