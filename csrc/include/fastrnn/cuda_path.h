// Which CUDA implementation runs a layer call: the one place it is chosen, by the call's sizes,
// dtype and the device's compute capability, or forced with FASTRNN_CUDA_PATH. Plain host C++
// (no CUDA), so that fastrnn._C.choose_cuda_path can test it on machines without a GPU.
//
// Paths:
// - "stepwise", the device-generic engine (fastrnn/engine.h): per step one cuBLAS GEMM and one fused
//   pointwise launch.
// - "persistent" (fastrnn/persistent.h): one cooperative launch per layer call, the recurrent weights
//   held in shared memory across all steps, where they fit (its Plan says whether, and why not).
//   It has never run on a GPU, so "auto" does not choose it yet: only FASTRNN_CUDA_PATH=persistent
//   does, and the first session lent a GPU measures both paths (benchmarks/gpu_check.sh) and sets
//   auto's rule here from what it measured.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <string>

#include "fastrnn/checks.h"
#include "fastrnn/persistent.h"

namespace fastrnn {

enum class CudaPath { kStepwise, kPersistent };

inline const char* cuda_path_name(CudaPath path) {
  switch (path) {
    case CudaPath::kStepwise:
      return "stepwise";
    case CudaPath::kPersistent:
      return "persistent";
  }
  return "unknown";
}

// The paths FASTRNN_CUDA_PATH accepts, as the error message lists them.
inline const char* cuda_path_choices() { return "auto, stepwise, persistent"; }

// The oldest compute capability the persistent kernel is built for (cooperative launch and grid
// sync need 6.0; 7.0 is the oldest arch the wheels target).
inline constexpr int kPersistentMinSm = 70;

// s: the call's sizes; sm: the device's compute capability as 10 * major + minor (90 for sm_90);
// plan: the persistent kernel's plan for this call on this device (persistent::make_plan).
inline CudaPath choose_cuda_path(const char* op, const LayerSizes& s, at::ScalarType dtype, int sm,
                                 const persistent::Plan& plan) {
  (void)s, (void)dtype;
  const char* env = std::getenv("FASTRNN_CUDA_PATH");
  const std::string forced = env ? env : "";
  // auto: stepwise until the persistent kernel has been measured on a GPU (it has not).
  if (forced.empty() || forced == "auto" || forced == "stepwise") return CudaPath::kStepwise;
  if (forced == "persistent") {
    TORCH_CHECK(sm >= kPersistentMinSm, op, ": FASTRNN_CUDA_PATH=persistent, but the persistent kernel needs compute ",
                "capability ", kPersistentMinSm / 10, ".", kPersistentMinSm % 10, " or newer and this device has ",
                sm / 10, ".", sm % 10);
    TORCH_CHECK(plan.fits, op, ": FASTRNN_CUDA_PATH=persistent, but the persistent kernel cannot run this call: ",
                plan.why);
    return CudaPath::kPersistent;
  }
  TORCH_CHECK(false, op, ": FASTRNN_CUDA_PATH must be one of ", cuda_path_choices(), " (or unset) but got '", forced,
              "'");
}

}  // namespace fastrnn
