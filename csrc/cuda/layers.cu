// The CUDA ops: the device-generic engine (fastrnn/engine.h) with cuBLAS GEMMs through ATen and
// each per-step pointwise pass one grid-stride kernel on the caller's current stream.
//
// This is the first CUDA path (issue 3): correct-first, one GEMM and one pointwise launch per
// step (two more per step with a projection), both directions one after the other. Its logic is
// tested on the CPU through the same engine (tests/test_engine.py); see README for what has run
// on a GPU.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "fastrnn/engine_ops.h"

namespace fastrnn {
namespace cuda {
namespace {

template <typename F>
__global__ void pointwise_kernel(F f, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    f(i);
  }
}

struct CudaLauncher {
  using Guard = c10::cuda::CUDAGuard;
  static void check_device(const char* op, const at::Tensor& x) {
    TORCH_CHECK(x.is_cuda(), op, ": the CUDA kernel got x on ", x.device());
  }
  // The host's lengths (a PackedSequence's, always on the CPU) copied to the device without making
  // the host wait: from pinned memory, on the current stream. Not while a CUDA graph is being
  // captured (the copy would read this call's host buffer at every replay): packed input cannot be
  // captured yet, and says so.
  static at::Tensor lengths_for_functors(const at::Tensor& lengths, const at::Tensor& x) {
    TORCH_CHECK(at::cuda::currentStreamCaptureStatus() == at::cuda::CaptureStatus::None,
                "fastrnn: a PackedSequence (variable lengths) cannot be captured in a CUDA graph yet; capture "
                "padded input instead");
    return lengths.pin_memory().to(x.device(), /*non_blocking=*/true);
  }
  template <typename F>
  static void run(int64_t n, const F& f) {
    if (n == 0) return;
    constexpr int kThreads = 256;
    const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{1} << 16);
    pointwise_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(f, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) { engine::register_ops<CudaLauncher>(m); }

}  // namespace cuda
}  // namespace fastrnn
