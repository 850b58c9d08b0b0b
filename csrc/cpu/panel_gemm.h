// A float GEMM for the per-step products of the time loop, C[M, N] = A[M, K] @ W + beta * C,
// with W packed once (before the loop) into column panels of kPanelWidth; also used for the
// products over all steps with a weight (the input projection and x's gradient), where it
// matched or beat MKL's sgemm (2 cores, [6400, 512] @ [512, 1536]: ~135 vs ~125 GFLOP/s) and
// adds the bias as it stores.
//
// Why: a step's GEMM is small ([B, P] @ [P, G*H], e.g. [8, 128] @ [128, 512]), where MKL's
// sgemm (packed or not) reached ~30 GFLOP/s on one core of the AVX2 AMD EPYC these benchmarks
// ran on, a third of that core's FMA peak, while torch's oneDNN LSTM runs its own kernels. The
// AVX2 kernel (panel_gemm_avx2.cpp) reaches ~80 GFLOP/s there on the same shapes. It is used
// only where torch runs at the AVX2 capability; on AVX-512 CPUs fastrnn keeps MKL's packed
// GEMM (what it was measured with there), and half, bfloat16 and double never use it.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastrnn {
namespace cpu {

constexpr int64_t kPanelWidth = 24;  // three AVX2 vectors of floats

// C[M, N] = A[M, K] (row stride lda) @ W + bias + beta * C (row stride ldc), W packed by
// pack_panels, bias [N] added to every row (nullptr: none).
using PanelGemm = void (*)(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* panels,
                           const float* bias, float beta, float* C, int64_t ldc);

// The panel kernel for the CPU capability torch runs at, or nullptr where fastrnn has none.
PanelGemm panel_gemm_kernel();

namespace capability_avx2 {
void panel_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* panels,
                const float* bias, float beta, float* C, int64_t ldc);
}

// Floats pack_panels writes for a [K, N] matrix: ceil(N / kPanelWidth) panels of [K, kPanelWidth].
inline int64_t packed_panels_size(int64_t K, int64_t N) {
  return (N + kPanelWidth - 1) / kPanelWidth * K * kPanelWidth;
}

// Packs W, the [K, N] matrix whose element (k, n) is w[k * stride_k + n * stride_n], into
// panels: panel p holds columns [p * kPanelWidth, (p + 1) * kPanelWidth) as [K, kPanelWidth]
// rows, the columns past N zero.
inline void pack_panels(int64_t K, int64_t N, const float* w, int64_t stride_k, int64_t stride_n, float* out) {
  for (int64_t p = 0; p * kPanelWidth < N; ++p) {
    const int64_t n0 = p * kPanelWidth, cols = std::min(kPanelWidth, N - n0);
    for (int64_t k = 0; k < K; ++k) {
      float* row = out + (p * K + k) * kPanelWidth;
      for (int64_t j = 0; j < cols; ++j) row[j] = w[k * stride_k + (n0 + j) * stride_n];
      std::fill(row + cols, row + kPanelWidth, 0.0f);
    }
  }
}

}  // namespace cpu
}  // namespace fastrnn
