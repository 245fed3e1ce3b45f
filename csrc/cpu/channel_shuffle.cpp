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
  // Locals, not struct fields: stores through char* may alias anything, which would force reloads.
  const int64_t row_bytes = g.inner * g.element_size;
  const int64_t channel_block = g.channels * row_bytes;
  const int64_t groups = g.groups;
  const int64_t per_group = g.per_group;
  const int64_t out_step = groups * row_bytes;
  // One task = one (outer index, j): output rows j * groups .. j * groups + groups - 1, which are contiguous, read
  // from row j of every group. Tasks run in output order, so each thread writes one contiguous range. (Split by
  // group instead, the threads wrote alternate rows, sharing a cache line at every row boundary that is not a
  // multiple of 64 bytes: ShuffleNetV2's 464@7x7 at batch 1 took 13 us on two threads, 4.9 on one.)
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 17) / std::max<int64_t>(out_step, 1));
  at::parallel_for(0, g.outer * per_group, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t a = task / per_group;
      const int64_t j = task - a * per_group;
      const char* src = in + a * channel_block + j * row_bytes;
      char* dst = out + a * channel_block + j * out_step;
      for (int64_t i = 0; i < groups; ++i) {
        copy_row<kRowBytes>(dst + i * row_bytes, src + i * per_group * row_bytes, row_bytes);
      }
    }
  });
}

// channels_last (one element per channel row): per pixel, out[j * groups + i] = in[i * per_group + j].
// Written in output order with a compile-time group count (kGroups > 0) the compiler turns the inner loop
// into vector loads of kGroups input streams and interleaving shuffles; kGroups == 0 is any group count.
template <typename element_t, int kGroups>
void shuffle_pixels(const element_t* in, element_t* out, const ShuffleGeometry& g) {
  const int64_t channels = g.channels;
  const int64_t groups = kGroups > 0 ? kGroups : g.groups;
  const int64_t per_group = g.per_group;
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(channels, 1));
  at::parallel_for(0, g.outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t a = begin; a < end; ++a) {
      const element_t* src = in + a * channels;
      element_t* dst = out + a * channels;
      for (int64_t j = 0; j < per_group; ++j) {
        for (int64_t i = 0; i < groups; ++i) {
          dst[j * groups + i] = src[i * per_group + j];
        }
      }
    }
  });
}

template <typename element_t>
void shuffle_pixels(const char* in, char* out, const ShuffleGeometry& g) {
  const auto* src = reinterpret_cast<const element_t*>(in);
  auto* dst = reinterpret_cast<element_t*>(out);
  switch (g.groups) {  // ShuffleNet v2 uses 2; ShuffleNet v1 uses 2, 3, 4, 8
    case 2: return shuffle_pixels<element_t, 2>(src, dst, g);
    case 3: return shuffle_pixels<element_t, 3>(src, dst, g);
    case 4: return shuffle_pixels<element_t, 4>(src, dst, g);
    case 8: return shuffle_pixels<element_t, 8>(src, dst, g);
    default: return shuffle_pixels<element_t, 0>(src, dst, g);
  }
}

at::Tensor shuffle_cpu(const at::Tensor& input, int64_t groups) {
  check_channel_shuffle_args(input, groups);
  at::Tensor output = empty_like_layout(input);
  if (output.numel() == 0) return output;
  const at::Tensor in = dense_like(input, output);
  const ShuffleGeometry g = shuffle_geometry(in, groups);
  const auto* src = static_cast<const char*>(in.const_data_ptr());
  auto* dst = static_cast<char*>(output.mutable_data_ptr());
  switch (g.inner * g.element_size) {  // bytes per channel row
    case 1: shuffle_pixels<uint8_t>(src, dst, g); break;
    case 2: shuffle_pixels<uint16_t>(src, dst, g); break;
    case 4: shuffle_pixels<uint32_t>(src, dst, g); break;
    case 8: shuffle_pixels<uint64_t>(src, dst, g); break;
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
