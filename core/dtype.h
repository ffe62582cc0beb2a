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
};

/// "float64", "float32", ..., "bool".
std::string_view dtype_name(DType dtype);
/// The DType of a format name; nullopt when the name is unknown.
std::optional<DType> dtype_from_name(std::string_view name);
/// Bytes per element.
int64_t dtype_size(DType dtype);

/// The dtype's code in safetensors headers ("F32", "BF16", "BOOL", ...) and back.
std::string_view safetensors_code(DType dtype);
std::optional<DType> dtype_from_safetensors(std::string_view code);
/// The legacy typed-storage class torch.save names for the dtype ("FloatStorage", ...) and back.
std::string_view torch_storage_class(DType dtype);
std::optional<DType> dtype_from_storage_class(std::string_view name);

}  // namespace shardload
