#include "loader/tensor_bytes.h"

#include "core/error.h"

namespace shardload {

DType dtype_of(const at::Tensor& t, const std::string& key) {
  switch (t.scalar_type()) {
    case at::kDouble:
      return DType::kFloat64;
    case at::kFloat:
      return DType::kFloat32;
    case at::kHalf:
      return DType::kFloat16;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kLong:
      return DType::kInt64;
    case at::kInt:
      return DType::kInt32;
    case at::kShort:
      return DType::kInt16;
    case at::kChar:
      return DType::kInt8;
    case at::kByte:
      return DType::kUInt8;
    case at::kBool:
      return DType::kBool;
    default:
      throw UsageError("key '" + key + "': dtype " + std::string(c10::toString(t.scalar_type())) +
                       " cannot be stored (supported: float64 float32 float16 bfloat16 int64 "
                       "int32 int16 int8 uint8 bool)");
  }
}

at::ScalarType scalar_type_of(DType dtype) {
  switch (dtype) {
    case DType::kFloat64:
      return at::kDouble;
    case DType::kFloat32:
      return at::kFloat;
    case DType::kFloat16:
      return at::kHalf;
    case DType::kBFloat16:
      return at::kBFloat16;
    case DType::kInt64:
      return at::kLong;
    case DType::kInt32:
      return at::kInt;
    case DType::kInt16:
      return at::kShort;
    case DType::kInt8:
      return at::kChar;
    case DType::kUInt8:
      return at::kByte;
    case DType::kBool:
      return at::kBool;
  }
  return at::kFloat;
}

Shape shape_of(const at::Tensor& t) { return Shape(t.sizes().begin(), t.sizes().end()); }

at::Tensor host_contiguous(const at::Tensor& t) {
  at::Tensor h = t.device().is_cpu() ? t : t.cpu();
  return h.is_contiguous() ? h : h.contiguous();
}

}  // namespace shardload
