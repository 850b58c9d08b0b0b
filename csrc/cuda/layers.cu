// The CUDA ops: the device-generic engine (fastrnn/engine.h) with cuBLAS GEMMs through ATen and
// each per-step pointwise pass one grid-stride kernel on the caller's current stream.
//
// Two time loops (fastrnn/cuda_path.h chooses per call): "stepwise", per step one GEMM and one
// pointwise launch for both directions together (two more with a projection), and "persistent", one
// cooperative launch of the block programs of fastrnn/persistent.h (persistent_launch.cuh). Their
// logic is tested on the CPU: the engine through tests/test_engine.py, the persistent programs through
// their emulation (tests/test_persistent.py); see README for what has run on a GPU.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/CUDAGraphsUtils.cuh>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <mutex>

#include "fastrnn/cuda_path.h"
#include "fastrnn/engine_ops.h"
#include "persistent_launch.cuh"

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

// torch.nn's cuDNN RNNs compute float32 in TF32 when torch.backends.cudnn's RNN flag allows it
// (allowTF32CuDNN(RNN): cudnn.allow_tf32, True by default), while ATen's cuBLAS GEMMs follow the
// CUDA matmul precision (torch.backends.cuda.matmul, IEEE by default). So that a drop-in computes
// in the precision torch.nn did, a float32 call sets the CUDA matmul precision to the RNN flag's
// while it enqueues its GEMMs (ATen reads it per GEMM, on the host), and restores it after. With
// cuDNN disabled, torch.nn's layers run on ATen's matmuls too: nothing to change.
//
// It sets torch's legacy setting (float32_matmul_precision) and the per-backend one together, so
// that readers of either (torch.backends.cuda.matmul.allow_tf32, TunableOp) see a consistent pair
// during the call, and restores both: the legacy one as it was, the per-backend one as it was or,
// when it was inheriting its value from torch.backends.cuda's, inheriting again. Where the user's own
// settings already mix the two APIs (torch then refuses to report the legacy one), only the
// per-backend one is changed. This state is process-wide: the mutex keeps concurrent fastrnn calls
// from interleaving their set and restore, but another thread's own float32 matmul issued during a
// fastrnn call would see it (README: CUDA, TF32).
// The precision torch.nn computes a float32 RNN's products in: TF32 where cuDNN's RNN flag allows it;
// with cuDNN disabled, ATen's CUDA matmul precision (its native layers run on ATen's matmuls). Both CUDA
// paths follow it: the stepwise GEMMs (RnnMatmulPrecision) and the persistent kernel's product.
bool torch_rnn_float32_uses_tf32() {
  auto& ctx = at::globalContext();
  return ctx.userEnabledCuDNN() ? ctx.allowTF32CuDNN(at::Float32Op::RNN)
                                : ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL) ==
                                      at::Float32Precision::TF32;
}

class RnnMatmulPrecision {
 public:
  explicit RnnMatmulPrecision(const at::Tensor& x) {
    if (x.scalar_type() != at::kFloat) return;
    auto& ctx = at::globalContext();
    if (!ctx.userEnabledCuDNN()) return;
    lock_ = std::unique_lock<std::mutex>(mutex());
    const bool want_tf32 = torch_rnn_float32_uses_tf32();
    saved_ = ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL);
    if ((saved_ == at::Float32Precision::TF32) == want_tf32) return;
    inherited_ = saved_ == ctx.float32Precision(at::Float32Backend::CUDA, at::Float32Op::ALL);
    try {
      saved_legacy_ = ctx.float32MatmulPrecision();
      has_legacy_ = true;
    } catch (const c10::Error&) {
      // torch refuses to report the legacy setting when the user mixed the two APIs: leave it alone.
    }
    changed_ = true;
    if (has_legacy_) {
      ctx.setFloat32MatmulPrecision(want_tf32 ? "high" : "highest");  // sets the per-backend one too
    } else {
      ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL,
                              want_tf32 ? at::Float32Precision::TF32 : at::Float32Precision::IEEE);
    }
  }
  ~RnnMatmulPrecision() {
    if (!changed_) return;
    auto& ctx = at::globalContext();
    if (has_legacy_) ctx.setFloat32MatmulPrecision(legacy_name(saved_legacy_));
    ctx.setFloat32Precision(at::Float32Backend::CUDA, at::Float32Op::MATMUL,
                            inherited_ ? at::Float32Precision::NONE : saved_);
  }
  RnnMatmulPrecision(const RnnMatmulPrecision&) = delete;
  RnnMatmulPrecision& operator=(const RnnMatmulPrecision&) = delete;

 private:
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static const char* legacy_name(at::Float32MatmulPrecision p) {
    switch (p) {
      case at::Float32MatmulPrecision::HIGHEST:
        return "highest";
      case at::Float32MatmulPrecision::HIGH:
        return "high";
      case at::Float32MatmulPrecision::MEDIUM:
        return "medium";
    }
    return "highest";
  }
  std::unique_lock<std::mutex> lock_;
  at::Float32Precision saved_ = at::Float32Precision::NONE;
  at::Float32MatmulPrecision saved_legacy_ = at::Float32MatmulPrecision::HIGHEST;
  bool inherited_ = false, has_legacy_ = false, changed_ = false;
};

struct CudaLauncher {
  struct Guard {
    explicit Guard(const at::Tensor& x) : device(x.device()), precision(x) {}
    c10::cuda::CUDAGuard device;
    RnnMatmulPrecision precision;
  };
  // The path (fastrnn/cuda_path.h): the persistent kernel's plan for this device when it runs the call,
  // else a plan with fits == false (the stepwise loop).
  static persistent::Plan check_call(const char* op, const LayerSizes& s, const at::Tensor& x) {
    TORCH_CHECK(x.is_cuda(), op, ": the CUDA kernel got x on ", x.device());
    const cudaDeviceProp* prop = at::cuda::getDeviceProperties(x.device().index());
    persistent::DeviceLimits limits{prop->multiProcessorCount, static_cast<int64_t>(prop->sharedMemPerBlockOptin),
                                    persistent::kThreadsPerBlock};
    // float in TF32 on the tensor cores where torch.nn would compute in TF32 and the device has TF32 MMA.
    limits.tf32 = x.scalar_type() == at::kFloat && prop->major >= 8 && torch_rnn_float32_uses_tf32();
    persistent::Plan plan = persistent::make_plan(s, s.G, x.element_size(), limits);
    if (!plan.fits && limits.tf32) {  // TF32's 16 x 16 tiles pad the slice: IEEE float may still fit
      limits.tf32 = false;
      plan = persistent::make_plan(s, s.G, x.element_size(), limits);
    }
    if (plan.fits && !prop->cooperativeLaunch) {
      plan.fits = false;
      plan.why = "this device cannot launch cooperative kernels";
    }
    const CudaPath path = choose_cuda_path(op, s, x.scalar_type(), 10 * prop->major + prop->minor, plan);
    if (path == CudaPath::kStepwise) plan.fits = false;
    return plan;
  }
  template <class Program>
  static void run_grid(const Program& program, const persistent::Plan& plan, int64_t shared_bytes) {
    launch_persistent("fastrnn", program, plan, shared_bytes);
  }
  // A host tensor that only variable lengths bring (the lengths, a PackedSequence's, always on the
  // CPU; the compact rows' index) copied to the device without making the host wait: from pinned
  // memory, on the current stream. Not while a CUDA graph is being captured (the copy would read
  // this call's host buffer at every replay): packed input cannot be captured yet, and says so.
  static at::Tensor host_to_device(const at::Tensor& host, const at::Tensor& x) {
    TORCH_CHECK(at::cuda::currentStreamCaptureStatus() == at::cuda::CaptureStatus::None,
                "fastrnn: a PackedSequence (variable lengths) cannot be captured in a CUDA graph yet; capture "
                "padded input instead");
    return host.pin_memory().to(x.device(), /*non_blocking=*/true);
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
