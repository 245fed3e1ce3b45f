// Output-layout helpers shared by every op, on every device.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

namespace fastconv {

// The output of an elementwise-shaped op: same sizes and strides as the input when the input is dense
// (NCHW, channels_last, channels_last_3d or any other dense permutation), otherwise the input's
// suggested memory format. This is exactly torch.empty_like(input), which the fake kernels use too.
inline at::Tensor empty_like_layout(const at::Tensor& input) { return at::empty_like(input); }

// A dense copy of `input` with the strides of `like` (which came from empty_like_layout(input)); a no-op
// for dense inputs, so kernels may index input and output with the same strides.
inline at::Tensor dense_like(const at::Tensor& input, const at::Tensor& like) {
  if (input.is_non_overlapping_and_dense() && input.strides() == like.strides()) return input;
  at::Tensor dense = at::empty_like(like);
  dense.copy_(input);
  return dense;
}

}  // namespace fastconv
