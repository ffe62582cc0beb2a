// Writing torch.save archives: the zip container (PyTorch's own writer: records stored, the data
// of every record 64-byte aligned from the archive's start, zip64 when needed) and the pickle of
// a tensor inside it. Shared by torch.save files (io/pt/) and DCP items (io/dcp/), which are
// both such archives. Reading them is zip_directory's and pt_layout's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>

#include "core/dtype.h"
#include "core/shape.h"
#include "io/pickle.h"

namespace shardload {

/// One storage of an archive: its key (the record `data/<key>`, the key the pickle's persistent
/// id names) and its bytes, which must stay valid while the archive is written.
struct TorchArchiveStorage {
  std::string key;
  std::span<const std::byte> bytes;
};

/// Receives an archive's bytes, in order. It may throw; the writer then stops and rethrows.
using ByteSink = std::function<void(const void* data, size_t size)>;

/// Writes a torch.save archive to `sink`: the records `data.pkl`, `.format_version` ("1"),
/// `.storage_alignment` ("64"), `byteorder` ("little"), `data/<key>` for each storage in the
/// given order, then `version` and `.data/serialization_id`, which PyTorch's writer adds:
/// torch.save's records in torch.save's order, every name under the folder `archive/` (the
/// folder torch.save uses when it writes to a stream, as DCP does). Returns the archive's size.
/// Throws UsageError for a storage key that is empty or repeats, FormatError when PyTorch's
/// writer fails; an exception from `sink` is rethrown as it was.
uint64_t write_torch_archive(std::string_view data_pkl,
                             std::span<const TorchArchiveStorage> storages, const ByteSink& sink);

/// The same archive, built in memory.
std::string torch_archive(std::string_view data_pkl, std::span<const TorchArchiveStorage> storages);

/// The strides of a C-order contiguous tensor of `sizes`, as PyTorch computes them (an extent
/// of 0 counts as 1: [2, 0, 3] has strides [3, 3, 1]).
Shape contiguous_strides(const Shape& sizes);

/// Pushes onto `w`'s stack a tensor of `dtype` and `sizes` with `strides`, storage offset 0 and
/// requires_grad False, whose storage (of numel(sizes) elements) is the archive's storage
/// `storage_key`, pickled as torch.save pickles it:
/// `torch._utils._rebuild_tensor_v2(<torch.<Name>Storage>, 0, sizes, strides, False,
/// OrderedDict())`, or for the dtypes without a typed storage class (uint16-64, complex32,
/// float8, float4) `_rebuild_tensor_v3(<torch.storage.UntypedStorage of nbytes>, ..., dtype)`.
void pickle_tensor(PickleWriter& w, std::string_view storage_key, DType dtype, const Shape& sizes,
                   const Shape& strides);

}  // namespace shardload
