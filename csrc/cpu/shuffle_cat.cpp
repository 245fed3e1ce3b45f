// shuffle_cat on the CPU: a 2-way interleave of channel rows (see csrc/shuffle_cat.h), parallel over blocks.
// NCHW rows are planes (memcpy); channels_last rows are single elements, interleaved per pixel by a loop
// the compiler vectorises. The backward is the same code with the copy direction reversed (kSplit).
#include "shuffle_cat.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstring>
#include <tuple>
#include <type_traits>

namespace fastconv {
namespace {

// Forward (kSplit = false) writes the interleaved tensor from the halves; backward (kSplit = true) the reverse.
template <bool kSplit>
using InterleavedPtr = std::conditional_t<kSplit, const char*, char*>;
template <bool kSplit>
using HalfPtr = std::conditional_t<kSplit, char*, const char*>;

template <typename element_t>
const element_t* as(const char* bytes) { return reinterpret_cast<const element_t*>(bytes); }
template <typename element_t>
element_t* as(char* bytes) { return reinterpret_cast<element_t*>(bytes); }

// One block of one-element rows. __restrict__ parameters tell the compiler the three rows do not overlap,
// so it emits vector loads of both halves and interleaving shuffles (unpacklo/hi) into full-width stores.
template <typename element_t>
inline void zip(element_t* __restrict__ interleaved, const element_t* __restrict__ first,
                const element_t* __restrict__ second, int64_t channels) {
  for (int64_t j = 0; j < channels; ++j) {
    interleaved[2 * j] = first[j];
    interleaved[2 * j + 1] = second[j];
  }
}

template <typename element_t>
inline void unzip(const element_t* __restrict__ interleaved, element_t* __restrict__ first,
                  element_t* __restrict__ second, int64_t channels) {
  for (int64_t j = 0; j < channels; ++j) {
    first[j] = interleaved[2 * j];
    second[j] = interleaved[2 * j + 1];
  }
}

template <typename element_t, bool kSplit>
void interleave_elements(InterleavedPtr<kSplit> interleaved, HalfPtr<kSplit> first, HalfPtr<kSplit> second,
                         const InterleaveGeometry& g) {
  // Locals, not struct fields: stores through element pointers may alias the struct, forcing reloads.
  const int64_t channels = g.channels;
  const int64_t interleaved_block = 2 * channels * static_cast<int64_t>(sizeof(element_t));
  const int64_t first_block = g.first_block_bytes;
  const int64_t second_block = g.second_block_bytes;
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>(channels, 1));
  at::parallel_for(0, g.outer, grain, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      auto* x = as<element_t>(interleaved + o * interleaved_block);
      auto* p = as<element_t>(first + o * first_block);
      auto* q = as<element_t>(second + o * second_block);
      if constexpr (kSplit) {
        unzip(x, p, q, channels);
      } else {
        zip(x, p, q, channels);
      }
    }
  });
}

// Copies one row. kRowBytes > 0 is a compile-time row length (a single move); 0 means any (one memcpy call).
template <int kRowBytes>
inline void copy_row(char* dst, const char* src, int64_t row_bytes) {
  std::memcpy(dst, src, kRowBytes > 0 ? kRowBytes : row_bytes);
}

template <int kRowBytes, bool kSplit>
void interleave_rows(InterleavedPtr<kSplit> interleaved, HalfPtr<kSplit> first, HalfPtr<kSplit> second,
                     const InterleaveGeometry& g) {
  const int64_t channels = g.channels;
  const int64_t row_bytes = g.row_bytes;
  const int64_t first_block = g.first_block_bytes;
  const int64_t second_block = g.second_block_bytes;
  // One task = one (block, channel): two rows in, two adjacent rows out (or the reverse).
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (2 * row_bytes));
  at::parallel_for(0, g.outer * channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t o = task / channels;
      const int64_t j = task - o * channels;
      auto* x = interleaved + 2 * task * row_bytes;  // block o, rows 2j and 2j + 1
      auto* p = first + o * first_block + j * row_bytes;
      auto* q = second + o * second_block + j * row_bytes;
      if constexpr (kSplit) {
        copy_row<kRowBytes>(p, x, row_bytes);
        copy_row<kRowBytes>(q, x + row_bytes, row_bytes);
      } else {
        copy_row<kRowBytes>(x, p, row_bytes);
        copy_row<kRowBytes>(x + row_bytes, q, row_bytes);
      }
    }
  });
}

template <bool kSplit>
void interleave(InterleavedPtr<kSplit> interleaved, HalfPtr<kSplit> first, HalfPtr<kSplit> second,
                const InterleaveGeometry& g) {
  switch (g.row_bytes) {
    case 1: return interleave_elements<uint8_t, kSplit>(interleaved, first, second, g);
    case 2: return interleave_elements<uint16_t, kSplit>(interleaved, first, second, g);
    case 4: return interleave_elements<uint32_t, kSplit>(interleaved, first, second, g);
    case 8: return interleave_elements<uint64_t, kSplit>(interleaved, first, second, g);
    case 16: return interleave_rows<16, kSplit>(interleaved, first, second, g);
    default: return interleave_rows<0, kSplit>(interleaved, first, second, g);
  }
}

at::Tensor shuffle_cat_cpu(const at::Tensor& a, const at::Tensor& b) {
  check_shuffle_cat_args(a, b);
  const at::MemoryFormat format = shuffle_cat_memory_format(a);
  at::Tensor output = at::empty(interleaved_sizes(a), a.options().memory_format(format));
  if (output.numel() == 0) return output;
  const BlockedHalf first = blocked_half(a, format);
  const BlockedHalf second = blocked_half(b, format);
  const InterleaveGeometry g = interleave_geometry(first, second, format);
  interleave<false>(static_cast<char*>(output.mutable_data_ptr()),
                    static_cast<const char*>(first.tensor.const_data_ptr()),
                    static_cast<const char*>(second.tensor.const_data_ptr()), g);
  return output;
}

std::tuple<at::Tensor, at::Tensor> shuffle_cat_backward_cpu(const at::Tensor& grad_output) {
  check_shuffle_cat_backward_args(grad_output);
  const at::MemoryFormat format = shuffle_cat_memory_format(grad_output);
  const auto options = grad_output.options().memory_format(format);
  at::Tensor grad_a = at::empty(half_sizes(grad_output), options);
  at::Tensor grad_b = at::empty(half_sizes(grad_output), options);
  if (grad_output.numel() == 0) return {grad_a, grad_b};
  // The kernels read the interleaved tensor densely; autograd's gradients already are (no copy then).
  const at::Tensor grad = grad_output.contiguous(format);
  const InterleaveGeometry g =
      interleave_geometry(blocked_half(grad_a, format), blocked_half(grad_b, format), format);
  interleave<true>(static_cast<const char*>(grad.const_data_ptr()), static_cast<char*>(grad_a.mutable_data_ptr()),
                   static_cast<char*>(grad_b.mutable_data_ptr()), g);
  return {grad_a, grad_b};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  m.impl("shuffle_cat", &shuffle_cat_cpu);
  m.impl("_shuffle_cat_backward", &shuffle_cat_backward_cpu);
}

}  // namespace fastconv
