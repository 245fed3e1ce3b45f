// CUDA emulation stub (scripts/cuda_emu): WMMA. A fragment holds its whole tile in every lane (the real lane
// mapping is unspecified, and the kernels use fragments only through these calls), so each lane computes the
// warp's whole result; the products are exact in float and summed in float, as on the tensor cores.
#pragma once
#include <fastconv_cuda_emu.h>
#include <type_traits>
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  static constexpr int num_elements = kRows * kCols;
  float x[kRows * kCols];
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, float value) {
  for (float& e : f.x) e = value;
}

template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P* p, unsigned int ldm) {
  using F = fragment<Use, M, N, K, T, Layout>;
  static_assert(std::is_same_v<T, P>, "load_matrix_sync: pointer and fragment element types differ");
  for (int r = 0; r < F::kRows; ++r) {
    for (int c = 0; c < F::kCols; ++c) {
      f.x[r * F::kCols + c] = std::is_same_v<Layout, col_major> ? static_cast<float>(p[c * ldm + r])
                                                                : static_cast<float>(p[r * ldm + c]);
    }
  }
}

template <int M, int N, int K, typename T, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LA>& a,
                     const fragment<matrix_b, M, N, K, T, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  float result[M * N];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float sum = c.x[i * N + j];
      for (int k = 0; k < K; ++k) sum += a.x[i * K + k] * b.x[k * N + j];
      result[i * N + j] = sum;
    }
  }
  for (int e = 0; e < M * N; ++e) d.x[e] = result[e];
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned int ldm,
                              layout_t layout) {
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      if (layout == mem_row_major) {
        p[i * ldm + j] = f.x[i * N + j];
      } else {
        p[j * ldm + i] = f.x[i * N + j];
      }
    }
  }
}
}  // namespace nvcuda::wmma
