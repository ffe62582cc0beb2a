// Element types of the checkpoint format, independent of LibTorch and HDF5.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace shardload {

/// Every element type that occurs in PyTorch checkpoints. The names are the format's
/// (docs/FORMAT.md) and equal PyTorch's dtype names without the `torch.` prefix.
enum class DType : uint8_t {
  kFloat64,
  kFloat32,
  kFloat16,
  kBFloat16,
  kInt64,
  kInt32,
  kInt16,
  kInt8,
  kUInt8,
  kBool,
  kUInt16,
  kUInt32,
  kUInt64,
  kComplex32,
  kComplex64,
  kComplex128,
  kFloat8E4M3FN,
  kFloat8E5M2,
  kFloat8E4M3FNUZ,
  kFloat8E5M2FNUZ,
  kFloat8E8M0FNU,
  kFloat4E2M1FNx2,  ///< two 4-bit floats per byte: one element is a byte, as in PyTorch
};

/// The number of dtypes (one more than the last enumerator): a dtype code read from another rank
/// is valid when below it.
inline constexpr uint64_t kDTypeCount = static_cast<uint64_t>(DType::kFloat4E2M1FNx2) + 1;

/// "float64", "float32", ..., "bool", "float8_e4m3fn", ... (PyTorch's names without `torch.`).
std::string_view dtype_name(DType dtype);
/// The DType of a format name; nullopt when the name is unknown.
std::optional<DType> dtype_from_name(std::string_view name);
/// Bytes per element.
int64_t dtype_size(DType dtype);

/// The dtype's code in safetensors headers ("F32", "BF16", "BOOL", "F8_E4M3", ...) and back;
/// empty for the dtypes safetensors lacks (complex32, complex128).
std::string_view safetensors_code(DType dtype);
std::optional<DType> dtype_from_safetensors(std::string_view code);
/// The legacy typed-storage class torch.save names for the dtype ("FloatStorage", ...) and back;
/// empty for the dtypes torch.save writes as an UntypedStorage with the dtype beside it
/// (_rebuild_tensor_v3: uint16-64, complex32, float8, float4).
std::string_view torch_storage_class(DType dtype);
std::optional<DType> dtype_from_storage_class(std::string_view name);

}  // namespace shardload
