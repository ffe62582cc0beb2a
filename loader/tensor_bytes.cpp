#include "loader/tensor_bytes.h"

#include <ATen/ATen.h>

#include "core/error.h"

namespace shardload {

DType dtype_of(const at::Tensor& t, const std::string& key) {
  if (auto dtype = dtype_from_scalar_type(t.scalar_type())) return *dtype;
  std::string known;
  for (uint64_t d = 0; d < kDTypeCount; ++d) {
    known += (d ? " " : "") + std::string(dtype_name(static_cast<DType>(d)));
  }
  throw UsageError("key '" + key + "': dtype " + std::string(c10::toString(t.scalar_type())) +
                   " cannot be stored (supported: " + known + ")");
}

Shape shape_of(const at::Tensor& t) { return Shape(t.sizes().begin(), t.sizes().end()); }

at::Tensor box_view(const at::Tensor& tensor, const Box& box) {
  at::Tensor view = tensor;
  for (size_t d = 0; d < box.shape.size(); ++d) {
    view = view.narrow(static_cast<int64_t>(d), box.offset[d], box.shape[d]);
  }
  return view;
}

at::Tensor host_contiguous(const at::Tensor& t) {
  at::Tensor h = t.device().is_cpu() ? t : t.cpu();
  return h.is_contiguous() ? h : h.contiguous();
}

const void* HostBytes::of(const at::Tensor& t) {
  if (t.device().is_cpu() && t.is_contiguous()) return t.data_ptr();
  const int64_t need = static_cast<int64_t>(t.nbytes());
  const bool pinned = t.is_cuda();
  if (!buffer_.defined() || buffer_.numel() < need || buffer_.is_pinned() != pinned) {
    buffer_ = at::empty({std::max<int64_t>(need, 1)},
                        at::TensorOptions().dtype(at::kByte).pinned_memory(pinned));
  }
  at::Tensor view = buffer_.narrow(0, 0, need).view(t.scalar_type()).view(t.sizes());
  view.copy_(t);
  return buffer_.data_ptr();
}

}  // namespace shardload
