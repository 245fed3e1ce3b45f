// shuffle_cat on CUDA: the 2-way interleave of channel rows of csrc/shuffle_cat.h in one grid-stride pass.
// NCHW rows (planes) move as the widest unit (up to 16 bytes) that divides the rows, the block strides and
// the pointers; channels_last rows are single elements, so there each thread loads a vector of kVec channels
// of a and of b (8 or 16 bytes each) and stores them interleaved as two vectors. The backward is the same
// code with the copy direction reversed (kSplit).
#include "shuffle_cat.h"

#include <fastconv/cuda_launch.h>

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace fastconv {
namespace {

template <typename element_t, int kCount>
struct alignas(sizeof(element_t) * kCount) Vec {
  element_t values[kCount];
};

template <int kBytes>
struct alignas(kBytes) Unit {
  unsigned char bytes[kBytes];
};

// Pointers for one direction: the kernels only read the side that is the input (the halves for the forward,
// the interleaved tensor for the backward) and only write the other.
struct Pointers {
  char* interleaved;
  char* first;
  char* second;
};

// Rows of any length, in units of kBytes: one thread per unit of the interleaved tensor.
template <int kBytes, bool kSplit, typename index_t>
__global__ void interleave_rows_kernel(Unit<kBytes>* __restrict__ interleaved, Unit<kBytes>* __restrict__ first,
                                       Unit<kBytes>* __restrict__ second, index_t total_units,
                                       index_t units_per_row, index_t channels, index_t first_block_units,
                                       index_t second_block_units) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t u = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; u < total_units; u += stride) {
    const index_t row = u / units_per_row;  // interleaved row = 2 * (o * channels + j) + half
    const index_t col = u - row * units_per_row;
    const index_t half_row = row >> 1;
    const index_t o = half_row / channels;
    const index_t j = half_row - o * channels;
    const bool is_second = row & 1;
    Unit<kBytes>* half = is_second ? second : first;
    const index_t offset = o * (is_second ? second_block_units : first_block_units) + j * units_per_row + col;
    if constexpr (kSplit) {
      half[offset] = interleaved[u];
    } else {
      interleaved[u] = half[offset];
    }
  }
}

// One-element rows (channels_last): one thread per kVec channels of one block (pixel).
template <typename element_t, int kVec, bool kSplit, typename index_t>
__global__ void interleave_elements_kernel(Vec<element_t, kVec>* __restrict__ interleaved,
                                           Vec<element_t, kVec>* __restrict__ first,
                                           Vec<element_t, kVec>* __restrict__ second, index_t total_vectors,
                                           index_t vectors_per_block, index_t first_block_vectors,
                                           index_t second_block_vectors) {
  const index_t stride = static_cast<index_t>(gridDim.x) * blockDim.x;
  for (index_t v = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < total_vectors; v += stride) {
    const index_t o = v / vectors_per_block;
    const index_t jv = v - o * vectors_per_block;
    Vec<element_t, kVec>& p = first[o * first_block_vectors + jv];
    Vec<element_t, kVec>& q = second[o * second_block_vectors + jv];
    // The interleaved tensor is dense: this thread's 2 * kVec elements are vectors 2v and 2v + 1.
    if constexpr (kSplit) {
      const Vec<element_t, kVec> low = interleaved[2 * v];
      const Vec<element_t, kVec> high = interleaved[2 * v + 1];
      Vec<element_t, kVec> x, y;
#pragma unroll
      for (int t = 0; t < kVec / 2; ++t) {
        x.values[t] = low.values[2 * t];
        y.values[t] = low.values[2 * t + 1];
        x.values[kVec / 2 + t] = high.values[2 * t];
        y.values[kVec / 2 + t] = high.values[2 * t + 1];
      }
      p = x;
      q = y;
    } else {
      const Vec<element_t, kVec> x = p;
      const Vec<element_t, kVec> y = q;
      Vec<element_t, kVec> low, high;
#pragma unroll
      for (int t = 0; t < kVec / 2; ++t) {
        low.values[2 * t] = x.values[t];
        low.values[2 * t + 1] = y.values[t];
        high.values[2 * t] = x.values[kVec / 2 + t];
        high.values[2 * t + 1] = y.values[kVec / 2 + t];
      }
      interleaved[2 * v] = low;
      interleaved[2 * v + 1] = high;
    }
  }
}

constexpr int kThreads = 256;

// 32-bit indexing when every index fits: the grid-stride index runs up to work + blocks * threads, and the
// largest offset into a half is (outer - 1) * block stride + one block.
bool use_int32(int64_t work, unsigned int blocks, int64_t largest_offset) {
  return fits_int32(work + int64_t{blocks} * kThreads) && fits_int32(largest_offset);
}

template <int kBytes, bool kSplit>
void launch_rows(const Pointers& ptr, const InterleaveGeometry& g) {
  const int64_t units_per_row = g.row_bytes / kBytes;
  const int64_t total = 2 * g.outer * g.channels * units_per_row;
  const int64_t first_block = g.first_block_bytes / kBytes;
  const int64_t second_block = g.second_block_bytes / kBytes;
  const int64_t largest = (g.outer - 1) * std::max(first_block, second_block) + g.channels * units_per_row;
  const unsigned int blocks = grid_stride_blocks(total, kThreads);
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto* x = reinterpret_cast<Unit<kBytes>*>(ptr.interleaved);
  auto* p = reinterpret_cast<Unit<kBytes>*>(ptr.first);
  auto* q = reinterpret_cast<Unit<kBytes>*>(ptr.second);
  if (use_int32(total, blocks, largest)) {
    interleave_rows_kernel<kBytes, kSplit, int32_t><<<blocks, kThreads, 0, stream>>>(
        x, p, q, total, units_per_row, g.channels, first_block, second_block);
  } else {
    interleave_rows_kernel<kBytes, kSplit, int64_t><<<blocks, kThreads, 0, stream>>>(
        x, p, q, total, units_per_row, g.channels, first_block, second_block);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename element_t, int kVec, bool kSplit>
void launch_elements(const Pointers& ptr, const InterleaveGeometry& g) {
  constexpr int64_t kVecBytes = sizeof(element_t) * kVec;
  const int64_t vectors_per_block = g.channels / kVec;
  const int64_t total = g.outer * vectors_per_block;
  const int64_t first_block = g.first_block_bytes / kVecBytes;
  const int64_t second_block = g.second_block_bytes / kVecBytes;
  // Also covers the interleaved tensor, whose largest vector index is 2 * total - 1.
  const int64_t largest =
      std::max((g.outer - 1) * std::max(first_block, second_block) + vectors_per_block, 2 * total);
  const unsigned int blocks = grid_stride_blocks(total, kThreads);
  const auto stream = at::cuda::getCurrentCUDAStream();
  using vec_t = Vec<element_t, kVec>;
  auto* x = reinterpret_cast<vec_t*>(ptr.interleaved);
  auto* p = reinterpret_cast<vec_t*>(ptr.first);
  auto* q = reinterpret_cast<vec_t*>(ptr.second);
  if (use_int32(2 * total, blocks, largest)) {
    interleave_elements_kernel<element_t, kVec, kSplit, int32_t><<<blocks, kThreads, 0, stream>>>(
        x, p, q, total, vectors_per_block, first_block, second_block);
  } else {
    interleave_elements_kernel<element_t, kVec, kSplit, int64_t><<<blocks, kThreads, 0, stream>>>(
        x, p, q, total, vectors_per_block, first_block, second_block);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The widest power of two up to 16 that divides every value (addresses, strides, lengths in bytes).
int common_alignment(uintptr_t bits) {
  for (int bytes = 16; bytes > 1; bytes /= 2) {
    if (bits % bytes == 0) return bytes;
  }
  return 1;
}

template <typename element_t, bool kSplit>
bool try_launch_elements(const Pointers& ptr, const InterleaveGeometry& g, uintptr_t address_bits) {
  // Vectors of kVec >= 2 channels (8 or 16 bytes): they must divide the channels, the block strides and
  // the addresses; otherwise the rows kernel moves one element per thread.
  constexpr int kElement = sizeof(element_t);
  static_assert(kElement <= 4, "8-byte elements: the rows kernel already moves 8 bytes per thread");
  const uintptr_t bits = address_bits | static_cast<uintptr_t>(g.channels * kElement);
  const int vector_bytes = common_alignment(bits);
  if (vector_bytes == 16) {
    launch_elements<element_t, 16 / kElement, kSplit>(ptr, g);
    return true;
  }
  if (vector_bytes == 8) {
    launch_elements<element_t, 8 / kElement, kSplit>(ptr, g);
    return true;
  }
  return false;
}

template <bool kSplit>
void interleave(const Pointers& ptr, const InterleaveGeometry& g) {
  const uintptr_t address_bits = reinterpret_cast<uintptr_t>(ptr.interleaved) |
                                 reinterpret_cast<uintptr_t>(ptr.first) | reinterpret_cast<uintptr_t>(ptr.second) |
                                 static_cast<uintptr_t>(g.first_block_bytes) |
                                 static_cast<uintptr_t>(g.second_block_bytes);
  bool launched = false;
  switch (g.row_bytes) {  // one-element rows: channels_last, or NCHW with one pixel
    case 1: launched = try_launch_elements<uint8_t, kSplit>(ptr, g, address_bits); break;
    case 2: launched = try_launch_elements<uint16_t, kSplit>(ptr, g, address_bits); break;
    case 4: launched = try_launch_elements<uint32_t, kSplit>(ptr, g, address_bits); break;
    default: break;  // 8-byte rows: the rows kernel already moves 8 bytes per thread
  }
  if (launched) return;
  switch (common_alignment(address_bits | static_cast<uintptr_t>(g.row_bytes))) {
    case 16: return launch_rows<16, kSplit>(ptr, g);
    case 8: return launch_rows<8, kSplit>(ptr, g);
    case 4: return launch_rows<4, kSplit>(ptr, g);
    case 2: return launch_rows<2, kSplit>(ptr, g);
    default: return launch_rows<1, kSplit>(ptr, g);
  }
}

at::Tensor shuffle_cat_cuda(const at::Tensor& a, const at::Tensor& b) {
  check_shuffle_cat_args(a, b);
  const c10::cuda::CUDAGuard guard(a.device());
  const at::MemoryFormat format = shuffle_cat_memory_format(a);
  at::Tensor output = at::empty(interleaved_sizes(a), a.options().memory_format(format));
  if (output.numel() == 0) return output;
  const BlockedHalf first = blocked_half(a, format);
  const BlockedHalf second = blocked_half(b, format);
  // The kernel only reads the halves; Pointers is mutable for both directions.
  const Pointers ptr{static_cast<char*>(output.mutable_data_ptr()),
                     const_cast<char*>(static_cast<const char*>(first.tensor.const_data_ptr())),
                     const_cast<char*>(static_cast<const char*>(second.tensor.const_data_ptr()))};
  interleave<false>(ptr, interleave_geometry(first, second, format));
  return output;
}

std::tuple<at::Tensor, at::Tensor> shuffle_cat_backward_cuda(const at::Tensor& grad_output) {
  check_shuffle_cat_backward_args(grad_output);
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const at::MemoryFormat format = shuffle_cat_memory_format(grad_output);
  const auto options = grad_output.options().memory_format(format);
  at::Tensor grad_a = at::empty(half_sizes(grad_output), options);
  at::Tensor grad_b = at::empty(half_sizes(grad_output), options);
  if (grad_output.numel() == 0) return {grad_a, grad_b};
  // The kernels read the interleaved tensor densely; autograd's gradients already are (no copy then).
  const at::Tensor grad = grad_output.contiguous(format);
  const BlockedHalf first = blocked_half(grad_a, format);
  const BlockedHalf second = blocked_half(grad_b, format);
  // The kernel only reads the interleaved tensor here.
  const Pointers ptr{const_cast<char*>(static_cast<const char*>(grad.const_data_ptr())),
                     static_cast<char*>(grad_a.mutable_data_ptr()), static_cast<char*>(grad_b.mutable_data_ptr())};
  interleave<true>(ptr, interleave_geometry(first, second, format));
  return {grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CUDA, m) {
  m.impl("shuffle_cat", &shuffle_cat_cuda);
  m.impl("_shuffle_cat_backward", &shuffle_cat_backward_cuda);
}

}  // namespace fastconv
