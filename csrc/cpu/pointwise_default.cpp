// The portable build of the pointwise kernels, and the run-time choice between capabilities.
#define FASTRNN_CAPABILITY_NS capability_default
#include "pointwise.h"
#include "panel_gemm.h"

#include <ATen/Version.h>

#include <string>
#include <type_traits>

namespace fastrnn {
namespace cpu {

namespace capability_default {
template RowKernels<float> make_row_kernels<float>();
template RowKernels<double> make_row_kernels<double>();
template RowKernels<c10::Half> make_row_kernels<c10::Half>();
template RowKernels<c10::BFloat16> make_row_kernels<c10::BFloat16>();
}  // namespace capability_default

template <typename scalar_t>
const RowKernels<scalar_t>& row_kernels() {
  // The same capability torch runs its own CPU kernels at (so ATEN_CPU_CAPABILITY=avx2 or
  // =default limits both), provided the compiler built ours for it.
  static const RowKernels<scalar_t> kernels = [] {
#if defined(__x86_64__) && defined(__GNUC__)
    if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
      const std::string capability = at::get_cpu_capability();
      if (capability == "AVX512") return capability_avx512::make_row_kernels<scalar_t>();
      if (capability == "AVX2") return capability_avx2::make_row_kernels<scalar_t>();
    }
#endif
    return capability_default::make_row_kernels<scalar_t>();
  }();
  return kernels;
}

PanelGemm panel_gemm_kernel() {
#if defined(__x86_64__) && defined(__GNUC__)
  // AVX2 only: measured there (panel_gemm.h); on AVX-512, MKL stays.
  static const PanelGemm kernel = at::get_cpu_capability() == "AVX2" ? &capability_avx2::panel_gemm : nullptr;
  return kernel;
#else
  return nullptr;
#endif
}

template const RowKernels<float>& row_kernels<float>();
template const RowKernels<double>& row_kernels<double>();
template const RowKernels<c10::Half>& row_kernels<c10::Half>();
template const RowKernels<c10::BFloat16>& row_kernels<c10::BFloat16>();

}  // namespace cpu
}  // namespace fastrnn
