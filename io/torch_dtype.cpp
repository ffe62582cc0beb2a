#include "io/torch_dtype.h"

#include <array>
#include <utility>

namespace shardload {
namespace {

/// In DType's enum order.
constexpr std::array<c10::ScalarType, kDTypeCount> kScalarTypes{
    c10::kDouble,
    c10::kFloat,
    c10::kHalf,
    c10::kBFloat16,
    c10::kLong,
    c10::kInt,
    c10::kShort,
    c10::kChar,
    c10::kByte,
    c10::kBool,
    c10::kUInt16,
    c10::kUInt32,
    c10::kUInt64,
    c10::kComplexHalf,
    c10::kComplexFloat,
    c10::kComplexDouble,
    c10::kFloat8_e4m3fn,
    c10::kFloat8_e5m2,
    c10::kFloat8_e4m3fnuz,
    c10::kFloat8_e5m2fnuz,
    c10::kFloat8_e8m0fnu,
    c10::kFloat4_e2m1fn_x2,
};

}  // namespace

c10::ScalarType scalar_type_of(DType dtype) { return kScalarTypes[static_cast<size_t>(dtype)]; }

std::optional<DType> dtype_from_scalar_type(c10::ScalarType type) {
  for (size_t i = 0; i < kScalarTypes.size(); ++i) {
    if (kScalarTypes[i] == type) return static_cast<DType>(i);
  }
  return std::nullopt;
}

}  // namespace shardload
