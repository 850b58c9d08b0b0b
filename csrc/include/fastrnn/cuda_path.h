// Which CUDA implementation runs a layer call: the one place it is chosen, by the call's sizes,
// dtype and the device's compute capability, or forced with FASTRNN_CUDA_PATH. Plain host C++
// (no CUDA), so that fastrnn._C.choose_cuda_path can test it on machines without a GPU.
//
// Paths so far: "stepwise", the device-generic engine (fastrnn/engine.h): per step one cuBLAS
// GEMM and one fused pointwise launch. A persistent small-batch kernel (recurrent weights held
// on-chip across all steps, one launch per sequence) is planned; it will be chosen here.
#pragma once

#include <ATen/ATen.h>

#include <cstdlib>
#include <string>

#include "fastrnn/checks.h"

namespace fastrnn {

enum class CudaPath { kStepwise };

inline const char* cuda_path_name(CudaPath path) {
  switch (path) {
    case CudaPath::kStepwise:
      return "stepwise";
  }
  return "unknown";
}

// The paths FASTRNN_CUDA_PATH accepts, as the error message lists them.
inline const char* cuda_path_choices() { return "auto, stepwise"; }

// s: the call's sizes; sm: the device's compute capability as 10 * major + minor (90 for sm_90).
inline CudaPath choose_cuda_path(const char* op, const LayerSizes& s, at::ScalarType dtype, int sm) {
  (void)s, (void)dtype, (void)sm;  // one path so far: every call takes it
  const char* env = std::getenv("FASTRNN_CUDA_PATH");
  const std::string forced = env ? env : "";
  if (forced.empty() || forced == "auto" || forced == "stepwise") return CudaPath::kStepwise;
  TORCH_CHECK(false, op, ": FASTRNN_CUDA_PATH must be one of ", cuda_path_choices(), " (or unset) but got '", forced,
              "'");
}

}  // namespace fastrnn
