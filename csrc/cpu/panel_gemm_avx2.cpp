// The AVX2+FMA panel GEMM (panel_gemm.h), chosen at run time by panel_gemm_kernel() only where
// torch runs at the AVX2 capability. Like pointwise_avx2.cpp it is built with a target pragma,
// not a compiler flag, and lives in the capability namespace.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma")
#include <immintrin.h>

#include "panel_gemm.h"

namespace fastrnn {
namespace cpu {
namespace capability_avx2 {
namespace {

// Rows [0, kRows) of C's columns [0, cols) of one panel: a kRows x 24 tile held in 3 * kRows
// accumulators (12 for 4 rows: enough independent FMA chains to keep both FMA units busy), each
// step of k loading one panel row (3 vectors) and broadcasting one element of each A row.
template <int kRows>
void tile(int64_t K, const float* A, int64_t lda, const float* panel, const float* bias, int64_t cols, float beta,
          float* C, int64_t ldc) {
  // Named accumulators, not an array indexed in the loop: GCC keeps them in registers then.
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c10 = c00, c11 = c00, c12 = c00;
  __m256 c20 = c00, c21 = c00, c22 = c00, c30 = c00, c31 = c00, c32 = c00;
  const float* a0 = A;
  const float* a1 = A + (kRows > 1 ? lda : 0);
  const float* a2 = A + (kRows > 2 ? 2 * lda : 0);
  const float* a3 = A + (kRows > 3 ? 3 * lda : 0);
  for (int64_t k = 0; k < K; ++k) {
    const float* p = panel + k * kPanelWidth;
    const __m256 b0 = _mm256_loadu_ps(p), b1 = _mm256_loadu_ps(p + 8), b2 = _mm256_loadu_ps(p + 16);
    __m256 a = _mm256_broadcast_ss(a0 + k);
    c00 = _mm256_fmadd_ps(a, b0, c00);
    c01 = _mm256_fmadd_ps(a, b1, c01);
    c02 = _mm256_fmadd_ps(a, b2, c02);
    if constexpr (kRows > 1) {
      a = _mm256_broadcast_ss(a1 + k);
      c10 = _mm256_fmadd_ps(a, b0, c10);
      c11 = _mm256_fmadd_ps(a, b1, c11);
      c12 = _mm256_fmadd_ps(a, b2, c12);
    }
    if constexpr (kRows > 2) {
      a = _mm256_broadcast_ss(a2 + k);
      c20 = _mm256_fmadd_ps(a, b0, c20);
      c21 = _mm256_fmadd_ps(a, b1, c21);
      c22 = _mm256_fmadd_ps(a, b2, c22);
    }
    if constexpr (kRows > 3) {
      a = _mm256_broadcast_ss(a3 + k);
      c30 = _mm256_fmadd_ps(a, b0, c30);
      c31 = _mm256_fmadd_ps(a, b1, c31);
      c32 = _mm256_fmadd_ps(a, b2, c32);
    }
  }
  __m256 acc[4][3] = {{c00, c01, c02}, {c10, c11, c12}, {c20, c21, c22}, {c30, c31, c32}};
  if (bias) {
    alignas(32) float b[kPanelWidth] = {};  // a partial panel's bias stops at cols
    std::copy(bias, bias + cols, b);
    for (int v = 0; v < 3; ++v) {
      const __m256 bv = _mm256_load_ps(b + 8 * v);
      for (int r = 0; r < kRows; ++r) acc[r][v] = _mm256_add_ps(acc[r][v], bv);
    }
  }
  const __m256 vbeta = _mm256_set1_ps(beta);
  for (int r = 0; r < kRows; ++r) {
    float* c = C + r * ldc;
    if (cols == kPanelWidth) {
      for (int v = 0; v < 3; ++v) {
        // beta == 0 must not read C (it may hold NaN, e.g. under FASTRNN_DEBUG).
        const __m256 out = beta == 0.0f ? acc[r][v] : _mm256_fmadd_ps(vbeta, _mm256_loadu_ps(c + 8 * v), acc[r][v]);
        _mm256_storeu_ps(c + 8 * v, out);
      }
    } else {
      alignas(32) float tmp[kPanelWidth];
      for (int v = 0; v < 3; ++v) _mm256_store_ps(tmp + 8 * v, acc[r][v]);
      for (int64_t j = 0; j < cols; ++j) c[j] = beta == 0.0f ? tmp[j] : tmp[j] + beta * c[j];
    }
  }
}

}  // namespace

void panel_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* panels,
                const float* bias, float beta, float* C, int64_t ldc) {
  for (int64_t p = 0; p * kPanelWidth < N; ++p) {
    const float* panel = panels + p * K * kPanelWidth;
    const int64_t n0 = p * kPanelWidth, cols = std::min(kPanelWidth, N - n0);
    const float* panel_bias = bias ? bias + n0 : nullptr;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) tile<4>(K, A + m * lda, lda, panel, panel_bias, cols, beta, C + m * ldc + n0, ldc);
    switch (M - m) {
      case 3: tile<3>(K, A + m * lda, lda, panel, panel_bias, cols, beta, C + m * ldc + n0, ldc); break;
      case 2: tile<2>(K, A + m * lda, lda, panel, panel_bias, cols, beta, C + m * ldc + n0, ldc); break;
      case 1: tile<1>(K, A + m * lda, lda, panel, panel_bias, cols, beta, C + m * ldc + n0, ldc); break;
      default: break;
    }
  }
}

}  // namespace capability_avx2
}  // namespace cpu
}  // namespace fastrnn
#endif
