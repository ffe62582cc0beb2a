// The writer of DCP directories: data files of torch.save archives at two ranks, their merged
// metadata, and the input checks. Python's dcp.load reading what it writes is checked by the
// interop tests; here the structure, read back with our own archive readers.
#include "io/dcp/dcp_writer.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/file_bytes.h"
#include "io/pickle.h"
#include "io/pt_layout.h"
#include "io/pt_views.h"
#include "io/zip_directory.h"
#include "io/zip_writer.h"
#include "tests/unit/temp_dir.h"

namespace shardload {
namespace {

using test_util::TempDir;

std::vector<float> iota_floats(size_t n, float start) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = start + static_cast<float>(i);
  return v;
}

TEST(ZipWriter, InMemoryArchiveHasTorchSaveRecordsWithAlignedData) {
  const std::string data = "0123456789";
  const TorchArchiveStorage storage{"0", std::as_bytes(std::span(data.data(), data.size()))};
  const std::string archive = torch_archive("\x80\x02N.", {&storage, 1});
  const auto members = scan_zip_directory(
      archive.size(),
      [&](uint64_t offset, char* buf, size_t n) { std::memcpy(buf, archive.data() + offset, n); });
  std::vector<std::string> names;
  for (const ZipMember& m : members) names.push_back(m.name);
  EXPECT_EQ(names, (std::vector<std::string>{"archive/data.pkl", "archive/.format_version",
                                             "archive/.storage_alignment", "archive/byteorder",
                                             "archive/data/0", "archive/version",
                                             "archive/.data/serialization_id"}));
  for (const ZipMember& m : members) {
    EXPECT_EQ(m.method, 0) << m.name;
    if (m.name == "archive/data/0") {
      EXPECT_EQ(m.data_offset % 64, 0u);
      EXPECT_EQ(archive.substr(m.data_offset, m.size), data);
    }
  }
  EXPECT_EQ(contiguous_strides({2, 0, 3}), (Shape{3, 3, 1}));
  EXPECT_EQ(contiguous_strides({}), Shape{});
}

TEST(DcpWriter, TwoRanksWriteArchivesAndMergedMetadata) {
  TempDir dir;
  const std::vector<float> top = iota_floats(6, 0), bottom = iota_floats(6, 6);
  const int64_t scalar = -5;
  // Rank 1 lists its rows first: merging sorts the chunks by offsets.
  const std::vector<DcpWriteChunk> rank0 = {
      {"w", DType::kFloat32, {4, 3}, {2, 0}, {2, 3}, bottom.data()},
      {"z", DType::kInt64, {}, {}, {}, &scalar}};
  const std::vector<DcpWriteChunk> rank1 = {
      {"w", DType::kFloat32, {4, 3}, {0, 0}, {2, 3}, top.data()},
      {"e", DType::kFloat32, {2, 0}, {0, 0}, {2, 0}, nullptr}};
  const DcpMetadata f0 = write_dcp_data_file(dir.path(), 0, rank0, {{"step", Value::of_int(7)}});
  const DcpMetadata f1 = write_dcp_data_file(
      dir.path(), 1, rank1,
      {{"lr", Value::of_float(0.5)},
       {"groups", Value::list({Value::dict({Value::of_str("lr"), Value::of_float(0.1)})})}});

  // Each fragment: its file, the values first, then the chunks, back to back.
  for (const auto& [rank, fragment] : {std::pair{0, &f0}, std::pair{1, &f1}}) {
    ASSERT_EQ(fragment->files, std::vector<std::string>{dcp_data_file_name(rank)});
    const FileBytes file = FileBytes::open(dir.file(fragment->files[0]));
    uint64_t end = 0;
    for (const DcpBytesItem& item : fragment->bytes_items) {
      EXPECT_EQ(item.storage.file, 0);
      EXPECT_EQ(item.storage.offset, end);
      end += item.storage.length;
    }
    for (const DcpTensor& tensor : fragment->tensors) {
      for (const DcpChunk& chunk : tensor.chunks) {
        EXPECT_EQ(chunk.storage.offset, end);
        end += chunk.storage.length;
        const PtTensor t =
            read_pt_tensor_archive(file, {chunk.storage.offset, chunk.storage.length});
        EXPECT_EQ(t.dtype, tensor.dtype);
        EXPECT_EQ(t.shape, chunk.sizes);
      }
    }
    EXPECT_EQ(file.size(), end);
  }
  {
    const FileBytes file = FileBytes::open(dir.file("__0_0.distcp"));
    const DcpStorage& s = f0.bytes_items.at(0).storage;
    EXPECT_EQ(read_pt_object_archive(file, {s.offset, s.length})->integer, 7);
    const DcpChunk& chunk = f0.tensors.at(0).chunks.at(0);
    const PtTensor t = read_pt_tensor_archive(file, {chunk.storage.offset, chunk.storage.length});
    std::vector<float> got(6);
    read_pt_box(file, t, {0, 0}, {2, 3}, got.data());
    EXPECT_EQ(got, bottom);
  }

  const DcpMetadata merged = merge_dcp_metadata({f0, f1});
  EXPECT_EQ(merged.files, (std::vector<std::string>{"__0_0.distcp", "__1_0.distcp"}));
  ASSERT_EQ(merged.tensors.size(), 3u);
  const DcpTensor& w = merged.tensors[0];
  EXPECT_EQ(w.fqn, "w");
  ASSERT_EQ(w.chunks.size(), 2u);
  EXPECT_EQ(w.chunks[0].offsets, (Shape{0, 0}));
  EXPECT_EQ(w.chunks[0].storage.file, 1);
  EXPECT_EQ(w.chunks[1].offsets, (Shape{2, 0}));
  EXPECT_EQ(w.chunks[1].storage.file, 0);
  ASSERT_EQ(merged.bytes_items.size(), 3u);
  EXPECT_EQ(merged.bytes_items[1].fqn, "lr");
  EXPECT_EQ(merged.bytes_items[1].storage.file, 1);

  // .metadata: a pickle of exactly DCP's classes, torch.Size and the dtypes.
  write_dcp_metadata(dir.path(), merged);
  const FileBytes meta = FileBytes::open(dir.file(".metadata"));
  std::string bytes(meta.size(), '\0');
  meta.read_at(0, bytes.size(), bytes.data());
  std::set<std::string> globals;
  PickleHooks hooks;
  hooks.allow_global = [&](const std::string& module, const std::string& name) {
    globals.insert(module + "." + name);
    return true;
  };
  hooks.call = [](const PickleValue& callable, const std::vector<PickleValuePtr>&) {
    PickleValuePtr v = make_pickle_value(PickleValue::Kind::kObject);
    v->type_name = callable.text;
    return v;
  };
  hooks.build = [](PickleValue&, const PickleValuePtr&) {};
  const PickleValuePtr root = unpickle(bytes, hooks);
  EXPECT_EQ(root->type_name, "torch.distributed.checkpoint.metadata.Metadata");
  const std::string m = "torch.distributed.checkpoint.metadata.";
  EXPECT_EQ(globals,
            (std::set<std::string>{
                m + "Metadata", m + "TensorStorageMetadata", m + "TensorProperties",
                m + "_MEM_FORMAT_ENCODING", m + "ChunkStorageMetadata", m + "BytesStorageMetadata",
                m + "MetadataIndex", "torch.distributed.checkpoint.filesystem._StorageInfo",
                "torch.Size", "torch.float32", "torch.int64", "torch.serialization._get_layout"}));
  EXPECT_FALSE(std::filesystem::exists(dir.file(".metadata.tmp")));
}

TEST(DcpWriter, RejectsInconsistentInput) {
  TempDir dir;
  const float data[6] = {};
  const DcpWriteChunk a{"a", DType::kFloat32, {2, 3}, {0, 0}, {1, 3}, data};
  auto write = [&](std::vector<DcpWriteChunk> chunks, ValueList values) {
    return write_dcp_data_file(dir.path(), 0, chunks, values);
  };
  EXPECT_THROW(write({a}, {{"v", Value::of_int(1)}, {"v", Value::of_int(2)}}), UsageError);
  EXPECT_THROW(write({a}, {{"a", Value::of_int(1)}}), UsageError);
  EXPECT_THROW(write({a, a}, {}), UsageError);  // same offsets twice
  DcpWriteChunk outside = a;
  outside.offsets = {2, 0};
  EXPECT_THROW(write({outside}, {}), UsageError);
  DcpWriteChunk other_dtype = a;
  other_dtype.offsets = {1, 0};
  other_dtype.dtype = DType::kFloat16;
  EXPECT_THROW(write({a, other_dtype}, {}), UsageError);
  EXPECT_THROW(write({}, {{"p", Value::list({Value::of_pickle("\x80\x02N.")})}}), UsageError);
  EXPECT_THROW(write_dcp_data_file(dir.path(), -1, {}, {}), UsageError);
  EXPECT_FALSE(std::filesystem::exists(dir.file("__0_0.distcp")));

  // Merging: overlapping chunks, disagreeing sizes, one file twice, one value twice.
  const DcpMetadata f0 = write({a}, {{"v", Value::of_int(1)}});
  DcpWriteChunk shifted = a;
  shifted.offsets = {0, 1};
  shifted.sizes = {1, 2};
  const DcpMetadata f1 = write_dcp_data_file(dir.path(), 1, {&shifted, 1}, {});
  EXPECT_THROW(merge_dcp_metadata({f0, f1}), UsageError);
  DcpWriteChunk bigger = a;
  bigger.global_size = {3, 3};
  bigger.offsets = {2, 0};
  EXPECT_THROW(merge_dcp_metadata({f0, write_dcp_data_file(dir.path(), 1, {&bigger, 1}, {})}),
               UsageError);
  EXPECT_THROW(merge_dcp_metadata({f0, f0}), UsageError);
  DcpMetadata renamed = f0;
  renamed.files = {"__9_0.distcp"};
  renamed.tensors.clear();
  EXPECT_THROW(merge_dcp_metadata({f0, renamed}), UsageError);
  DcpMetadata bad_file = f0;
  bad_file.tensors[0].chunks[0].storage.file = 1;
  EXPECT_THROW(write_dcp_metadata(dir.path(), bad_file), UsageError);
  EXPECT_FALSE(std::filesystem::exists(dir.file(".metadata")));
}

}  // namespace
}  // namespace shardload
