// Between LibTorch's scalar types and the format's dtypes.
#pragma once

#include <c10/core/ScalarType.h>

#include <optional>

#include "core/dtype.h"

namespace shardload {

/// LibTorch's scalar type of a format dtype.
c10::ScalarType scalar_type_of(DType dtype);
/// The format dtype of a scalar type; nullopt for those the format lacks (quantized, bits,
/// bcomplex32, sub-byte integers).
std::optional<DType> dtype_from_scalar_type(c10::ScalarType type);

}  // namespace shardload
