#include "core/dtype.h"

#include <array>
#include <utility>

namespace shardload {
namespace {

/// Every name a dtype goes by, one row per dtype, in enum order.
struct DTypeInfo {
  DType dtype;
  std::string_view name;
  int64_t size;
  std::string_view safetensors;
  std::string_view storage_class;
};

constexpr std::array<DTypeInfo, kDTypeCount> kDTypes{{
    {DType::kFloat64, "float64", 8, "F64", "DoubleStorage"},
    {DType::kFloat32, "float32", 4, "F32", "FloatStorage"},
    {DType::kFloat16, "float16", 2, "F16", "HalfStorage"},
    {DType::kBFloat16, "bfloat16", 2, "BF16", "BFloat16Storage"},
    {DType::kInt64, "int64", 8, "I64", "LongStorage"},
    {DType::kInt32, "int32", 4, "I32", "IntStorage"},
    {DType::kInt16, "int16", 2, "I16", "ShortStorage"},
    {DType::kInt8, "int8", 1, "I8", "CharStorage"},
    {DType::kUInt8, "uint8", 1, "U8", "ByteStorage"},
    {DType::kBool, "bool", 1, "BOOL", "BoolStorage"},
    {DType::kUInt16, "uint16", 2, "U16", ""},
    {DType::kUInt32, "uint32", 4, "U32", ""},
    {DType::kUInt64, "uint64", 8, "U64", ""},
    {DType::kComplex32, "complex32", 4, "", ""},
    {DType::kComplex64, "complex64", 8, "C64", "ComplexFloatStorage"},
    {DType::kComplex128, "complex128", 16, "", "ComplexDoubleStorage"},
    {DType::kFloat8E4M3FN, "float8_e4m3fn", 1, "F8_E4M3", ""},
    {DType::kFloat8E5M2, "float8_e5m2", 1, "F8_E5M2", ""},
    {DType::kFloat8E4M3FNUZ, "float8_e4m3fnuz", 1, "F8_E4M3FNUZ", ""},
    {DType::kFloat8E5M2FNUZ, "float8_e5m2fnuz", 1, "F8_E5M2FNUZ", ""},
    {DType::kFloat8E8M0FNU, "float8_e8m0fnu", 1, "F8_E8M0", ""},
    {DType::kFloat4E2M1FNx2, "float4_e2m1fn_x2", 1, "F4", ""},
}};

template <typename Field>
std::optional<DType> find_by(Field field, std::string_view value) {
  if (value.empty()) return std::nullopt;  // a format that lacks a dtype names it ""
  for (const auto& info : kDTypes) {
    if (info.*field == value) return info.dtype;
  }
  return std::nullopt;
}

}  // namespace

std::string_view dtype_name(DType dtype) { return kDTypes[static_cast<size_t>(dtype)].name; }

int64_t dtype_size(DType dtype) { return kDTypes[static_cast<size_t>(dtype)].size; }

std::optional<DType> dtype_from_name(std::string_view name) {
  return find_by(&DTypeInfo::name, name);
}

std::string_view safetensors_code(DType dtype) {
  return kDTypes[static_cast<size_t>(dtype)].safetensors;
}

std::optional<DType> dtype_from_safetensors(std::string_view code) {
  return find_by(&DTypeInfo::safetensors, code);
}

std::string_view torch_storage_class(DType dtype) {
  return kDTypes[static_cast<size_t>(dtype)].storage_class;
}

std::optional<DType> dtype_from_storage_class(std::string_view name) {
  return find_by(&DTypeInfo::storage_class, name);
}

}  // namespace shardload
