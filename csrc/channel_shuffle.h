// channel_shuffle: declarations, argument checks and geometry shared by the CPU and CUDA kernels.
#pragma once

#include <fastconv/layout.h>

#include <c10/util/Exception.h>

#include <cstdint>

namespace fastconv {

// A dense tensor whose channel dimension has stride `inner` is, in memory, an [outer, channels, inner]
// array (whatever the order of the other dimensions), so one kernel serves NCHW, channels_last and any
// dense permutation. Output channel c = j * groups + i reads input channel i * per_group + j.
struct ShuffleGeometry {
  int64_t outer;
  int64_t channels;
  int64_t inner;  // elements between consecutive channels
  int64_t groups;
  int64_t per_group;
  int64_t element_size;  // bytes; the kernels move bytes, so every dtype is one code path
};

inline void check_channel_shuffle_args(const at::Tensor& input, int64_t groups) {
  TORCH_CHECK(input.dim() >= 3, "channel_shuffle: input must have at least 3 dimensions (N, C, *), got sizes ",
              input.sizes());
  TORCH_CHECK(groups > 0, "channel_shuffle: groups must be positive, got ", groups);
  TORCH_CHECK(input.size(1) % groups == 0, "channel_shuffle: groups (", groups,
              ") must divide the number of channels (input.shape[1] = ", input.size(1), ")");
}

inline ShuffleGeometry shuffle_geometry(const at::Tensor& dense, int64_t groups) {
  const int64_t channels = dense.size(1);
  // With one channel the channel stride is arbitrary; the permutation is then the identity anyway.
  const int64_t inner = channels > 1 ? dense.stride(1) : dense.numel() / std::max<int64_t>(dense.size(0), 1);
  const int64_t outer = dense.numel() == 0 ? 0 : dense.numel() / (channels * inner);
  return {outer, channels, inner, groups, channels / groups, static_cast<int64_t>(dense.element_size())};
}

// The backward of a shuffle with `groups` groups is a shuffle with channels / groups groups.
inline int64_t inverse_shuffle_groups(const at::Tensor& grad_output, int64_t groups) {
  check_channel_shuffle_args(grad_output, groups);
  return grad_output.size(1) / groups;
}

}  // namespace fastconv
