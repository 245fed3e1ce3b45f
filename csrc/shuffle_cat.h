// shuffle_cat: declarations, argument checks, the output-layout rule and the geometry shared by the CPU
// and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <string>
#include <vector>

namespace fastconv {

// "torch.float32", as Python prints it, so C++ and Python raise the same message.
inline std::string python_dtype_name(c10::ScalarType dtype) {
  return "torch." + std::string(c10::getDtypeNames(dtype).first);
}

inline void check_shuffle_cat_args(const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(a.dim() >= 3, "shuffle_cat: a must have at least 3 dimensions (N, C, *), got sizes ", a.sizes());
  TORCH_CHECK(b.sizes() == a.sizes(), "shuffle_cat: b.shape ", b.sizes(), " must equal a.shape ", a.sizes());
  TORCH_CHECK(b.scalar_type() == a.scalar_type(), "shuffle_cat: b.dtype (", python_dtype_name(b.scalar_type()),
              ") must equal a.dtype (", python_dtype_name(a.scalar_type()), ")");
  TORCH_CHECK(b.device() == a.device(), "shuffle_cat: b.device (", b.device(), ") must equal a.device (", a.device(),
              ")");
}

inline void check_shuffle_cat_backward_args(const at::Tensor& grad_output) {
  TORCH_CHECK(grad_output.dim() >= 3,
              "shuffle_cat backward: grad_output must have at least 3 dimensions (N, 2C, *), got sizes ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.size(1) % 2 == 0, "shuffle_cat backward: grad_output.shape[1] must be even (2C), got ",
              grad_output.size(1));
}

// The one layout rule (fastconv/ops/shuffle_cat.py has the same for the fake kernels): channels_last when
// `like` is 4-D with channels innermost (stride(1) == 1), more than one channel and more than one pixel --
// dense channels_last tensors and channel slices of them, such as the ShuffleNet split
// x.chunk(2, dim=1) -- otherwise contiguous (NCHW). With one channel or one pixel both formats coincide
// in memory and contiguous is chosen.
inline at::MemoryFormat shuffle_cat_memory_format(const at::Tensor& like) {
  return like.dim() == 4 && like.size(1) > 1 && like.size(2) * like.size(3) > 1 && like.stride(1) == 1
             ? at::MemoryFormat::ChannelsLast
             : at::MemoryFormat::Contiguous;
}

// Sizes of the interleaved tensor (N, 2C, *) from one half (N, C, *), and back.
inline std::vector<int64_t> interleaved_sizes(const at::Tensor& half) {
  std::vector<int64_t> sizes = half.sizes().vec();
  sizes[1] *= 2;
  return sizes;
}

inline std::vector<int64_t> half_sizes(const at::Tensor& interleaved) {
  std::vector<int64_t> sizes = interleaved.sizes().vec();
  sizes[1] /= 2;
  return sizes;
}

// In `format`, a (N, C, *) tensor is `outer` blocks of C channel rows of `inner` elements: NCHW has N
// blocks of C planes, channels_last N*H*W blocks (pixels) of C one-element rows. The kernels read a block's
// rows densely and the blocks at any constant stride, so channel slices (x.chunk(2, dim=1), the ShuffleNet
// split) and batch-expanded tensors are read in place. Returns that block stride in elements, or -1 when
// `half` is not laid out so (then it is copied dense first).
inline int64_t block_stride(const at::Tensor& half, at::MemoryFormat format) {
  const auto sizes = half.sizes();
  const auto strides = half.strides();
  const int64_t dims = half.dim();
  int64_t dense_elements = 1;  // the rows, then the channels, innermost first; size-1 dims have any stride
  auto dense = [&](int64_t d) {
    if (sizes[d] != 1 && strides[d] != dense_elements) return false;
    dense_elements *= sizes[d];
    return true;
  };
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  if (!channels_last) {
    for (int64_t d = dims - 1; d >= 2; --d) {
      if (!dense(d)) return -1;
    }
  }
  if (!dense(1)) return -1;
  // The block dims, innermost first (NCHW: N; channels_last: W, H, N), must collapse into one stride.
  const int64_t channels_last_blocks[] = {3, 2, 0};
  const int64_t nchw_blocks[] = {0};
  const int64_t* block_dims = channels_last ? channels_last_blocks : nchw_blocks;
  const int64_t block_dim_count = channels_last ? 3 : 1;
  int64_t stride = -1;
  int64_t span = 1;
  for (int64_t i = 0; i < block_dim_count; ++i) {
    const int64_t d = block_dims[i];
    if (sizes[d] == 1) continue;
    if (stride < 0) {
      stride = strides[d];
    } else if (strides[d] != stride * span) {
      return -1;
    }
    span *= sizes[d];
  }
  return stride < 0 ? dense_elements : stride;
}

// One input or output half (a, b, grad_a or grad_b) as the kernels see it.
struct BlockedHalf {
  at::Tensor tensor;     // `half` itself, or a dense copy when its layout cannot be read in place
  int64_t block_stride;  // elements between consecutive blocks
};

inline BlockedHalf blocked_half(const at::Tensor& half, at::MemoryFormat format) {
  const int64_t stride = block_stride(half, format);
  if (stride >= 0) return {half, stride};
  // The only copy on this path: layouts the kernels cannot index (e.g. spatial crops, mixed formats).
  at::Tensor dense = half.contiguous(format);
  return {dense, block_stride(dense, format)};
}

// The whole op is a 2-way interleave of channel rows: in every block, interleaved row 2j + 0 is row j of
// the first half (a) and interleaved row 2j + 1 row j of the second (b); the backward is the inverse.
// The interleaved tensor (out, or grad_output) is always dense: its blocks are 2 * channels rows apart.
struct InterleaveGeometry {
  int64_t outer;     // blocks
  int64_t channels;  // C: rows per block of each half
  int64_t row_bytes;  // inner * element size: the kernels move bytes, so every dtype is one code path
  int64_t first_block_bytes;   // block stride of the first half (a), in bytes
  int64_t second_block_bytes;  // block stride of the second half (b), in bytes
};

inline InterleaveGeometry interleave_geometry(const BlockedHalf& first, const BlockedHalf& second,
                                              at::MemoryFormat format) {
  const at::Tensor& half = first.tensor;
  const int64_t element_size = static_cast<int64_t>(half.element_size());
  int64_t inner = 1;
  if (format == at::MemoryFormat::Contiguous) {
    for (int64_t d = 2; d < half.dim(); ++d) inner *= half.size(d);
  }
  const int64_t channels = half.size(1);
  const int64_t outer = half.numel() == 0 ? 0 : half.numel() / (channels * inner);
  return {outer, channels, inner * element_size, first.block_stride * element_size,
          second.block_stride * element_size};
}

}  // namespace fastconv
