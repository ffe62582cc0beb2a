// No unverified byte: a byte flipped at the start, middle or end of a chunk smaller than a
// message (packed), larger than a message (one checksum block), and of several blocks fails every
// load that reads it — whole, cut into messages, split over 2 and 3 ranks, resharded from
// replicated to split along dim 0 or dim 1 — on every rank, naming file, key and byte range.
// A chunk without block checksums (as h5py writes them, format version 1) read partially fails
// too. With verify_checksums = false the same loads pass and say so.
#include <hdf5.h>

#include <filesystem>

#include "io/h5/shard_file.h"
#include "loader/shardload.h"
#include "mpi_test_util.h"
#include "tests/mpi/device_double.h"

namespace shardload::testing {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kMessageBytes = 64 << 10;

/// 16 KiB (packed, below a message), 384 KiB (one block, six messages), 2.5 MiB (three blocks).
TensorList originals() {
  return {{"small", make_tensor(21, at::kFloat, {32, 128})},
          {"large", make_tensor(22, at::kFloat, {256, 384})},
          {"huge", make_tensor(23, at::kFloat, {1024, 640})}};
}

/// Where a chunk's byte lies in its shard file, found the way h5py would (H5Dget_offset).
struct Spot {
  std::string file;
  uint64_t pos = 0;
};

Spot locate(const std::string& ckpt, const std::string& key, uint64_t byte) {
  const std::string file = ckpt + "/" + shard_file_name(0, 1);
  ShardReader reader(file);
  for (const auto& row : reader.read_index(0)) {
    if (row.key != key) continue;
    hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t d = H5Dopen2(f, row.dataset.c_str(), H5P_DEFAULT);
    const haddr_t offset = H5Dget_offset(d);
    H5Dclose(d);
    H5Fclose(f);
    return Spot{file, offset + row.data_offset + byte};
  }
  ADD_FAILURE() << "no key " << key;
  return {};
}

void flip(const Spot& spot) { flip_byte(spot.file, spot.pos, 0x10); }

/// Rewrites the scalar int64 attribute `format_version` of an HDF5 file (an h5py-era v1 file).
void set_version(const std::string& file, int64_t version) {
  hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  hid_t a = H5Aopen(f, "format_version", H5P_DEFAULT);
  H5Awrite(a, H5T_NATIVE_INT64, &version);
  H5Aclose(a);
  H5Fclose(f);
}

/// The first n ranks (MPI_COMM_NULL on the others).
MPI_Comm first_ranks(int n) {
  MPI_Comm sub;
  MPI_Comm_split(MPI_COMM_WORLD, world_rank() < n ? 0 : MPI_UNDEFINED, world_rank(), &sub);
  return sub;
}

struct Layout {
  std::string name;
  std::vector<SplitRule> rules;
  int ranks;
};

/// Every load the corrupt byte must fail: replicated (messages of 64 KiB), split along dim 0
/// over 2 and 3 ranks, split along dim 1 over every rank.
std::vector<Layout> layouts() {
  std::vector<Layout> out = {{"replicated", {}, world_size()}};
  for (int n : {2, 3}) {
    if (world_size() >= n) out.push_back({"dim0 over " + std::to_string(n), {{".", 0, {}}}, n});
  }
  out.push_back({"dim1 over " + std::to_string(world_size()), {{".", 1, {}}}, world_size()});
  return out;
}

/// Loads `ckpt` in `layout` on its ranks; returns the error ("" when it loaded), the same on
/// every rank of the layout (checked), and whether the result said it verified.
std::string load_in(const std::string& ckpt, const Layout& layout, bool verify,
                    bool* verified = nullptr) {
  MPI_Comm comm = first_ranks(layout.ranks);
  std::string error;
  if (comm != MPI_COMM_NULL) {
    int r = 0;
    MPI_Comm_rank(comm, &r);
    TensorList zeros;
    for (const auto& t : originals()) zeros.push_back({t.key, at::zeros_like(t.tensor)});
    Partition target = Partition::from_global(zeros, layout.rules, r, layout.ranks);
    LoadOptions options;
    options.message_bytes = kMessageBytes;
    options.verify_checksums = verify;
    try {
      LoadResult result = load(target, ckpt, comm, options);
      if (verified) *verified = result.checksums_verified;
    } catch (const FormatError& e) {
      error = e.what();
    } catch (const std::exception& e) {
      error = std::string("not a FormatError: ") + e.what();
    }
    MPI_Comm_free(&comm);
  }
  return error;
}

/// Saves the originals into `ckpt` (one shard, replicated) from rank 0; `v1` makes it a
/// version-1 checkpoint without block checksums, like one h5py writes.
void save_clean(const std::string& ckpt, bool v1) {
  if (world_rank() == 0) {
    write_checkpoint(ckpt, originals(), 1, false);
    if (v1) {
      // Rewrite the shard without block checksums, each chunk in a dataset of its own.
      const std::string file = ckpt + "/" + shard_file_name(0, 1);
      {
        ShardWriter w(file + ".v1", 0, 1, {.block_bytes = 0, .pack_threshold = 0});
        ShardReader r(file);
        for (auto row : r.read_index(0)) {
          std::vector<char> bytes(row.nbytes);
          r.read_chunk(row, bytes.data(), true);
          w.add(row, bytes.data());
        }
        w.finish();
      }
      fs::rename(file + ".v1", file);
      set_version(file, 1);
      set_version(ckpt + "/manifest.h5", 1);
    }
  }
  barrier();
}

/// `one_spot`: only the byte in the middle of each chunk (the device-route variant, kept short).
void corruption_fails_every_read_shape(bool v1, bool one_spot = false) {
  SharedDir dir(v1 ? "integrity-v1" : "integrity");
  const std::string clean = dir.path + "/clean";
  save_clean(clean, v1);
  for (const auto& [key, tensor] : originals()) {
    const uint64_t nbytes = tensor.nbytes();
    std::vector<uint64_t> spots = {uint64_t{0}, nbytes / 2 + 1, nbytes - 1};
    if (one_spot) spots = {nbytes / 2 + 1};
    for (uint64_t byte : spots) {
      const std::string ckpt = dir.path + "/" + key + "-" + std::to_string(byte);
      std::string where;
      if (world_rank() == 0) {
        fs::copy(clean, ckpt);
        const Spot spot = locate(ckpt, key, byte);
        flip(spot);
        where = spot.file;
      }
      barrier();
      // The range named: the block holding the byte (1 MiB blocks), or the whole chunk.
      const uint64_t block = v1 ? nbytes : uint64_t{1} << 20;
      const uint64_t lo = byte / block * block, hi = std::min(lo + block, nbytes);
      const std::string range =
          "bytes [" + std::to_string(lo) + ", " + std::to_string(hi) + ") of chunk";
      for (const Layout& layout : layouts()) {
        SCOPED_TRACE(key + " byte " + std::to_string(byte) + ", " + layout.name);
        const std::string error = load_in(ckpt, layout, /*verify=*/true);
        if (world_rank() < layout.ranks) {
          EXPECT_NE(error.find("checksum mismatch"), std::string::npos) << error;
          EXPECT_NE(error.find("key '" + key + "'"), std::string::npos) << error;
          EXPECT_NE(error.find(shard_file_name(0, 1)), std::string::npos) << error;
          EXPECT_NE(error.find(range), std::string::npos) << error;
        }
        // Every rank of the layout holds the same error as rank 0 (which is in every layout).
        std::string first = error;
        int n = static_cast<int>(first.size());
        MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
        first.resize(static_cast<size_t>(n));
        MPI_Bcast(first.data(), n, MPI_CHAR, 0, MPI_COMM_WORLD);
        EXPECT_TRUE(all_ranks(world_rank() >= layout.ranks || error == first)) << error;
        bool verified = true;
        const std::string unchecked = load_in(ckpt, layout, /*verify=*/false, &verified);
        EXPECT_EQ(unchecked, "");
        if (world_rank() < layout.ranks) EXPECT_FALSE(verified);
      }
      barrier();
      if (world_rank() == 0) fs::remove_all(ckpt);
    }
  }
  // The clean checkpoint loads in every layout, verified.
  for (const Layout& layout : layouts()) {
    bool verified = false;
    EXPECT_EQ(load_in(clean, layout, true, &verified), "") << layout.name;
    if (world_rank() < layout.ranks) EXPECT_TRUE(verified) << layout.name;
  }
}

TEST(Integrity, FlippedByteFailsEveryReadShapeOnEveryRank) {
  corruption_fails_every_read_shape(/*v1=*/false);
}

TEST(Integrity, ChunksWithoutBlockChecksumsFailPartialReadsToo) {
  corruption_fails_every_read_shape(/*v1=*/true);
}

// The device route (the CPU double of the device contract): a corrupt byte stops at the reader's
// status word; no device buffer or tensor ever receives it.
TEST(Integrity, CorruptBytesNeverReachDeviceTensors) {
  ScopedDeviceDouble device;
  corruption_fails_every_read_shape(/*v1=*/false, /*one_spot=*/true);
}

}  // namespace
}  // namespace shardload::testing
