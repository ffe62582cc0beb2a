#include "io/h5/shard_index.h"

#include <string>

#include "core/error.h"
#include "io/h5/format.h"
#include "io/h5/hdf5.h"
#include "io/h5/vlen_check.h"

namespace shardload {
namespace {

std::string column(const char* name) { return std::string("index column '") + name + "'"; }

}  // namespace

void write_index_table(hid_t file, const std::vector<ChunkRecord>& rows, uint64_t block_bytes) {
  h5::Handle index =
      h5::group_handle(H5Gcreate2(file, "index", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  const hid_t g = index.get();
  std::vector<std::string> keys, dtypes, datasets;
  std::vector<int64_t> ndim, global_shape, offset, shape, order;
  std::vector<uint64_t> nbytes, checksums, data_offset, blocks;
  keys.reserve(rows.size());
  dtypes.reserve(rows.size());
  datasets.reserve(rows.size());
  for (const auto& r : rows) {
    keys.push_back(r.key);
    dtypes.emplace_back(dtype_name(r.dtype));
    datasets.push_back(r.dataset);
    ndim.push_back(static_cast<int64_t>(r.global_shape.size()));
    global_shape.insert(global_shape.end(), r.global_shape.begin(), r.global_shape.end());
    offset.insert(offset.end(), r.offset.begin(), r.offset.end());
    shape.insert(shape.end(), r.shape.begin(), r.shape.end());
    nbytes.push_back(r.nbytes);
    checksums.push_back(r.checksum);
    order.push_back(r.order);
    data_offset.push_back(r.data_offset);
    if (block_bytes) {
      if (r.block_bytes != block_bytes ||
          r.block_checksums.size() != block_count(r.nbytes, block_bytes)) {
        throw FormatError("key '" + r.key + "': its block checksums do not match block_bytes " +
                          std::to_string(block_bytes));
      }
      blocks.insert(blocks.end(), r.block_checksums.begin(), r.block_checksums.end());
    }
  }
  h5::write_strings(g, "key", keys);
  h5::write_strings(g, "dtype", dtypes);
  h5::write_i64(g, "ndim", ndim);
  h5::write_i64(g, "global_shape", global_shape);
  h5::write_i64(g, "offset", offset);
  h5::write_i64(g, "shape", shape);
  h5::write_strings(g, "dataset", datasets);
  h5::write_u64(g, "nbytes", nbytes);
  h5::write_u64(g, "checksum", checksums);
  h5::write_i64(g, "order", order);
  h5::write_u64(g, "data_offset", data_offset);
  if (block_bytes) {
    h5::write_attr(g, "block_bytes", static_cast<int64_t>(block_bytes));
    h5::write_u64(g, "block_checksums", blocks);
  }
}

std::vector<ChunkRecord> read_index_table(hid_t file, int64_t version, uint64_t file_size,
                                          int32_t file_number, h5::VlenCheck& vlen) {
  h5::Handle index = h5::open_group(file, "index");
  const hid_t g = index.get();
  const h5::ColumnLimits row_limits{kMaxIndexRows, file_size};

  // 1. Every per-row column's extent, checked before any column is read.
  const int64_t n = h5::column_rows(g, "key", H5T_STRING, row_limits);
  auto expect_rows = [&](const char* name, H5T_class_t cls) {
    const int64_t m = h5::column_rows(g, name, cls, row_limits);
    if (m != n) {
      throw FormatError("index columns have different lengths: " + column(name) + " has " +
                        std::to_string(m) + " rows, 'key' has " + std::to_string(n));
    }
  };
  expect_rows("dtype", H5T_STRING);
  expect_rows("ndim", H5T_INTEGER);
  expect_rows("dataset", H5T_STRING);
  expect_rows("nbytes", H5T_INTEGER);
  expect_rows("checksum", H5T_INTEGER);
  // Optional columns: writers that omit `order` (h5py by hand) get file order; `data_offset`
  // exists from version 2 on (a version-1 reader would misread packed chunks).
  const bool has_order = h5::link_exists(g, "order");
  if (has_order) expect_rows("order", H5T_INTEGER);
  const bool has_data_offset = version >= 2 && h5::link_exists(g, "data_offset");
  if (has_data_offset) expect_rows("data_offset", H5T_INTEGER);
  const bool has_blocks = h5::link_exists(g, "block_checksums");
  vlen.check_attribute_messages(g, "group 'index'");
  if (has_blocks != h5::has_attr(g, "block_bytes")) {
    throw FormatError(
        "the index has one of column 'block_checksums' and attribute 'block_bytes' without the "
        "other");
  }
  uint64_t block_bytes = 0;
  if (has_blocks) {
    const int64_t bb = h5::read_attr_i64(g, "block_bytes");
    if (bb < static_cast<int64_t>(kMinBlockBytes) || bb > static_cast<int64_t>(kMaxBlockBytes) ||
        bb % 8 != 0) {
      throw FormatError("attribute 'block_bytes' of the index is " + std::to_string(bb) +
                        " (a multiple of 8 from " + std::to_string(kMinBlockBytes) + " to " +
                        std::to_string(kMaxBlockBytes) + ")");
    }
    block_bytes = static_cast<uint64_t>(bb);
  }

  // 2. ndim, then the shape columns, whose length is the sum of ndim.
  const auto ndim = h5::read_i64(g, "ndim", row_limits);
  int64_t total_dims = 0;
  for (int64_t d : ndim) {
    if (d < 0 || d > kMaxDims) {
      throw FormatError(column("ndim") + " holds " + std::to_string(d) + " (at most " +
                        std::to_string(kMaxDims) + " dimensions)");
    }
    total_dims += d;
  }
  const h5::ColumnLimits dim_limits{kMaxIndexRows * kMaxDims, file_size};
  for (const char* name : {"global_shape", "offset", "shape"}) {
    if (h5::column_rows(g, name, H5T_INTEGER, dim_limits) != total_dims) {
      throw FormatError("index shape columns do not match the sum of 'ndim' (" +
                        std::to_string(total_dims) + ")");
    }
  }

  // 3. The columns themselves.
  auto keys = h5::read_strings(g, "key", row_limits, vlen);
  auto dtypes = h5::read_strings(g, "dtype", row_limits, vlen);
  auto datasets = h5::read_strings(g, "dataset", row_limits, vlen);
  const auto global_shape = h5::read_i64(g, "global_shape", dim_limits);
  const auto offset = h5::read_i64(g, "offset", dim_limits);
  const auto shape = h5::read_i64(g, "shape", dim_limits);
  const auto nbytes = h5::read_u64(g, "nbytes", row_limits);
  const auto checksums = h5::read_u64(g, "checksum", row_limits);
  std::vector<int64_t> order;
  if (has_order) order = h5::read_i64(g, "order", row_limits);
  std::vector<uint64_t> data_offset;
  if (has_data_offset) data_offset = h5::read_u64(g, "data_offset", row_limits);

  // 4. Rows, each checked: dtype, shapes, byte counts (overflow-checked), the data range.
  std::vector<ChunkRecord> rows(static_cast<size_t>(n));
  size_t pos = 0;
  uint64_t total_bytes = 0, total_blocks = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    ChunkRecord& r = rows[i];
    r.key = std::move(keys[i]);
    try {
      auto dt = dtype_from_name(dtypes[i]);
      if (!dt) throw FormatError("unknown dtype '" + dtypes[i].substr(0, 64) + "'");
      r.dtype = *dt;
      const auto d = static_cast<size_t>(ndim[i]);
      r.global_shape.assign(global_shape.begin() + pos, global_shape.begin() + pos + d);
      r.offset.assign(offset.begin() + pos, offset.begin() + pos + d);
      r.shape.assign(shape.begin() + pos, shape.begin() + pos + d);
      pos += d;
      r.file = file_number;
      r.dataset = std::move(datasets[i]);
      r.nbytes = nbytes[i];
      r.checksum = checksums[i];
      r.order = has_order ? order[i] : (int64_t{file_number} << 32) + static_cast<int64_t>(i);
      r.data_offset = has_data_offset ? data_offset[i] : 0;
      for (size_t k = 0; k < d; ++k) {
        if (r.shape[k] < 0 || r.global_shape[k] < 0 || r.offset[k] < 0) {
          throw FormatError("negative extent or offset (global shape " + shape_str(r.global_shape) +
                            ", offset " + shape_str(r.offset) + ", chunk shape " +
                            shape_str(r.shape) + ")");
        }
      }
      numel(r.global_shape);  // throws when the element count overflows int64
      const auto expect = static_cast<uint64_t>(byte_size(r.shape, dtype_size(r.dtype)));
      if (r.nbytes != expect) {
        throw FormatError("nbytes " + std::to_string(r.nbytes) + " does not match shape " +
                          shape_str(r.shape) + " of " + std::string(dtype_name(r.dtype)));
      }
      const uint64_t end = checked_add(r.data_offset, r.nbytes, "data_offset + nbytes");
      if (end > file_size) {
        throw FormatError("its data (" + std::to_string(r.nbytes) + " bytes at data offset " +
                          std::to_string(r.data_offset) + ") cannot lie in a file of " +
                          std::to_string(file_size) + " bytes");
      }
      total_bytes = checked_add(total_bytes, r.nbytes, "total chunk bytes");
      total_blocks += block_count(r.nbytes, block_bytes);
    } catch (...) {
      rethrow_with_context("key '" + r.key + "': ");
    }
  }
  if (total_bytes > file_size) {
    throw FormatError("the index declares " + std::to_string(total_bytes) +
                      " bytes of chunks, more than the file's " + std::to_string(file_size));
  }

  // 5. Block checksums: ceil(nbytes / block_bytes) per row, concatenated.
  if (has_blocks) {
    const h5::ColumnLimits block_limits{static_cast<int64_t>(total_blocks), file_size};
    const int64_t m =
        h5::column_rows(g, "block_checksums", H5T_INTEGER, h5::ColumnLimits{INT64_MAX, file_size});
    if (m != static_cast<int64_t>(total_blocks)) {
      throw FormatError(column("block_checksums") + " has " + std::to_string(m) +
                        " entries; the chunks' sizes and block_bytes " +
                        std::to_string(block_bytes) + " make " + std::to_string(total_blocks));
    }
    const auto blocks = h5::read_u64(g, "block_checksums", block_limits);
    size_t at = 0;
    for (auto& r : rows) {
      const auto k = static_cast<size_t>(block_count(r.nbytes, block_bytes));
      r.block_bytes = block_bytes;
      r.block_checksums.assign(blocks.begin() + at, blocks.begin() + at + k);
      at += k;
      if (k == 1 && r.block_checksums[0] != r.checksum) {
        throw FormatError("key '" + r.key +
                          "': its one block checksum and its chunk checksum "
                          "differ (both cover the same bytes)");
      }
    }
  }
  return rows;
}

}  // namespace shardload
