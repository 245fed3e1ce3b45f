// channel_shuffle on the CPU: a byte permutation of channel rows, parallel over (outer, group).
#include "channel_shuffle.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

namespace fastconv {
namespace {

// Copies one channel row. kRowBytes > 0 is a compile-time row length (channels_last rows are one element;
// memcpy of a constant size compiles to a single move); 0 means any length (NCHW planes), one memcpy call.
template <int kRowBytes>
inline void copy_row(char* dst, const char* src, int64_t row_bytes) {
  std::memcpy(dst, src, kRowBytes > 0 ? kRowBytes : row_bytes);
}

template <int kRowBytes>
void shuffle_rows(const char* in, char* out, const ShuffleGeometry& g) {
  const int64_t row_bytes = g.inner * g.element_size;
  const int64_t channel_block = g.channels * row_bytes;
  // Each task reads one input group (per_group contiguous rows) and scatters it with stride `groups`.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(g.per_group * row_bytes, 1));
  at::parallel_for(0, g.outer * g.groups, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t a = task / g.groups;
      const int64_t i = task % g.groups;
      const char* src = in + a * channel_block + i * g.per_group * row_bytes;
      char* dst = out + a * channel_block + i * row_bytes;
      for (int64_t j = 0; j < g.per_group; ++j) {
        copy_row<kRowBytes>(dst + j * g.groups * row_bytes, src + j * row_bytes, row_bytes);
      }
    }
  });
}

at::Tensor shuffle_cpu(const at::Tensor& input, int64_t groups) {
  check_channel_shuffle_args(input, groups);
  at::Tensor output = empty_like_layout(input);
  if (output.numel() == 0) return output;
  const at::Tensor in = dense_like(input, output);
  const ShuffleGeometry g = shuffle_geometry(in, groups);
  const auto* src = static_cast<const char*>(in.const_data_ptr());
  auto* dst = static_cast<char*>(output.mutable_data_ptr());
  switch (g.inner * g.element_size) {
    case 1: shuffle_rows<1>(src, dst, g); break;
    case 2: shuffle_rows<2>(src, dst, g); break;
    case 4: shuffle_rows<4>(src, dst, g); break;
    case 8: shuffle_rows<8>(src, dst, g); break;
    case 16: shuffle_rows<16>(src, dst, g); break;
    default: shuffle_rows<0>(src, dst, g); break;
  }
  return output;
}

at::Tensor channel_shuffle_backward_cpu(const at::Tensor& grad_output, int64_t groups) {
  return shuffle_cpu(grad_output, inverse_shuffle_groups(grad_output, groups));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("channel_shuffle", &shuffle_cpu);
  m.impl("_channel_shuffle_backward", &channel_shuffle_backward_cpu);
}

}  // namespace fastconv
