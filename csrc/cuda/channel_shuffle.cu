// channel_shuffle on CUDA: one grid-stride pass; each thread moves one vector unit (up to 16 bytes) of a
// channel row. NCHW rows are whole planes and move as 16-byte vectors; channels_last rows are one element.
#include "channel_shuffle.h"

#include <fastconv/cuda_launch.h>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

namespace fastconv {
namespace {

template <int kBytes>
struct alignas(kBytes) Unit {
  unsigned char bytes[kBytes];
};

template <int kBytes, typename index_t>
__global__ void shuffle_kernel(const Unit<kBytes>* __restrict__ in, Unit<kBytes>* __restrict__ out,
                               index_t total_units, index_t units_per_row, index_t channels, index_t groups,
                               index_t per_group) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t u = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < total_units; u += stride) {
    const index_t row = u / units_per_row;
    const index_t col = u - row * units_per_row;
    const index_t a = row / channels;
    const index_t c = row - a * channels;
    const index_t source_row = a * channels + (c % groups) * per_group + c / groups;
    out[u] = in[source_row * units_per_row + col];
  }
}

template <int kBytes>
void launch(const at::Tensor& in, at::Tensor& out, const ShuffleGeometry& g) {
  const int64_t units_per_row = g.inner * g.element_size / kBytes;
  const int64_t total = g.outer * g.channels * units_per_row;
  constexpr int threads = 256;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto* src = static_cast<const Unit<kBytes>*>(in.const_data_ptr());
  auto* dst = static_cast<Unit<kBytes>*>(out.mutable_data_ptr());
  const unsigned int blocks = grid_stride_blocks(total, threads);
  // The grid-stride index runs up to total + blocks * threads: that must fit too, or it would wrap.
  if (fits_int32(total + int64_t{blocks} * threads)) {
    shuffle_kernel<kBytes, int32_t><<<blocks, threads, 0, stream>>>(
        src, dst, total, units_per_row, g.channels, g.groups, g.per_group);
  } else {
    shuffle_kernel<kBytes, int64_t><<<blocks, threads, 0, stream>>>(
        src, dst, total, units_per_row, g.channels, g.groups, g.per_group);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The widest unit that divides a row and the alignment of both base pointers.
int unit_bytes(const at::Tensor& in, const at::Tensor& out, int64_t row_bytes) {
  const auto address_bits = reinterpret_cast<uintptr_t>(in.const_data_ptr()) |
                            reinterpret_cast<uintptr_t>(out.const_data_ptr()) |
                            static_cast<uintptr_t>(row_bytes);
  for (int bytes = 16; bytes > 1; bytes /= 2) {
    if (address_bits % bytes == 0) return bytes;
  }
  return 1;
}

at::Tensor shuffle_cuda(const at::Tensor& input, int64_t groups) {
  check_channel_shuffle_args(input, groups);
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = empty_like_layout(input);
  if (output.numel() == 0) return output;
  const at::Tensor in = dense_like(input, output);
  const ShuffleGeometry g = shuffle_geometry(in, groups);
  switch (unit_bytes(in, output, g.inner * g.element_size)) {
    case 16: launch<16>(in, output, g); break;
    case 8: launch<8>(in, output, g); break;
    case 4: launch<4>(in, output, g); break;
    case 2: launch<2>(in, output, g); break;
    default: launch<1>(in, output, g); break;
  }
  return output;
}

at::Tensor channel_shuffle_backward_cuda(const at::Tensor& grad_output, int64_t groups) {
  return shuffle_cuda(grad_output, inverse_shuffle_groups(grad_output, groups));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("channel_shuffle", &shuffle_cuda);
  m.impl("_channel_shuffle_backward", &channel_shuffle_backward_cuda);
}

}  // namespace fastconv
