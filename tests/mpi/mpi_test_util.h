// Helpers shared by the multi-rank tests: the world, a shared scratch directory, deterministic
// tensors (the same on every rank), bit-exact comparison, agreement across ranks.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/shape.h"

namespace shardload::testing {

inline int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
inline int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}
inline void barrier() { MPI_Barrier(MPI_COMM_WORLD); }

/// A fresh directory every rank sees (rank 0 creates it, the name is broadcast).
inline std::string shared_temp_dir(const std::string& tag) {
  std::string path;
  if (world_rank() == 0) {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / ("shardload-" + tag + "-XXXXXX")).string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    path = mkdtemp(buf.data());
  }
  int n = static_cast<int>(path.size());
  MPI_Bcast(&n, 1, MPI_INT, 0, MPI_COMM_WORLD);
  path.resize(static_cast<size_t>(n));
  MPI_Bcast(path.data(), n, MPI_CHAR, 0, MPI_COMM_WORLD);
  return path;
}

/// Removes a shared directory when the test ends (rank 0, after a barrier).
struct SharedDir {
  explicit SharedDir(const std::string& tag) : path(shared_temp_dir(tag)) {}
  ~SharedDir() {
    barrier();
    if (world_rank() == 0) std::filesystem::remove_all(path);
  }
  std::string path;
};

/// A tensor whose values depend only on (seed, dtype, shape): identical on every rank.
/// XORs byte `pos` of `file` with `mask` (a corrupt checkpoint); true when it was written.
inline bool flip_byte(const std::string& file, uint64_t pos, char mask = 0x5a) {
  std::fstream io(file, std::ios::in | std::ios::out | std::ios::binary);
  const auto at = static_cast<std::streamoff>(pos);
  io.seekg(at);
  char value = 0;
  io.read(&value, 1);
  value = static_cast<char>(value ^ mask);
  io.seekp(at);
  io.write(&value, 1);
  return io.good();
}

inline at::Tensor make_tensor(int64_t seed, at::ScalarType dtype, const Shape& shape) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed) * 7919 + 17);
  at::Tensor base = at::randn(shape, gen, at::TensorOptions().dtype(at::kDouble)) * 100;
  if (dtype == at::kBool) return base.gt(0);
  if (at::isIntegralType(dtype, /*includeBool=*/false)) {
    if (dtype == at::kByte) return base.abs().remainder(256).to(dtype);
    if (dtype == at::kChar) return base.remainder(128).to(dtype);
    return base.to(dtype);
  }
  return base.to(dtype);
}

/// Bit-for-bit equality (same dtype, shape and bytes; NaNs compare by their bits).
inline bool same_bits(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || !a.sizes().equals(b.sizes())) return false;
  if (a.numel() == 0) return true;
  at::Tensor x = a.contiguous(), y = b.contiguous();
  return std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

/// True when `value` is the same string on every rank (collective).
inline bool same_on_all_ranks(const std::string& value) {
  int n = static_cast<int>(value.size());
  std::vector<int> sizes(static_cast<size_t>(world_size()));
  MPI_Allgather(&n, 1, MPI_INT, sizes.data(), 1, MPI_INT, MPI_COMM_WORLD);
  std::string root = value;
  int rn = sizes[0];
  root.resize(static_cast<size_t>(rn));
  MPI_Bcast(root.data(), rn, MPI_CHAR, 0, MPI_COMM_WORLD);
  int mine = root == value ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

/// True on every rank when `ok` holds on every rank (collective).
inline bool all_ranks(bool ok) {
  int mine = ok ? 1 : 0, all = 0;
  MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return all == 1;
}

/// Runs `body`, returns the what() of the shardload::Error it threw ("" when none).
template <typename E, typename F>
std::string error_of(F&& body) {
  try {
    body();
  } catch (const E& e) {
    return e.what();
  }
  return "";
}

/// Every dtype of the format, as LibTorch scalar types.
inline std::vector<at::ScalarType> all_dtypes() {
  return {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16, at::kLong,
          at::kInt,    at::kShort, at::kChar, at::kByte,     at::kBool};
}

}  // namespace shardload::testing
