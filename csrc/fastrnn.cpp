// The extension module fastrnn._C: every op schema in one place, and the build facts that
// fastrnn.backend_info() reports. Kernels register themselves per dispatch key in cpu/ and cuda/.
//
// Shapes (letters as in the docs): x [T, B, I] the layer input (time-major, padded), shared by
// both directions; w_ih [D, G*H, I] and b_ih [D, G*H] its projection x_proj = W_ih x + b_ih
// ([D, T, B, G*H]), which the op computes itself (cpu/recurrence.h: one GEMM, or blocks on a
// second thread for small steps); backward takes them again and returns their gradients too
// (grad_x only when need_grad_x, else empty [0]); h0/hn [D, B, P]; c0/cn [D, B, H]; w_hh [D, G*H, P]; b_hh [D, G*H]; w_hr [D, P, H];
// lengths [B] int64 on the CPU (None: every sequence has length T); y [T, B, D*P], both
// directions side by side as torch.nn returns them. The workspace holds what backward needs
// ([D, T, B, S*H]; S = 5 LSTM, 4 GRU, 0 RNN) or is empty [0] when save_for_backward is false.
// Backward ops return empty [0] tensors for gradients of absent optional arguments.
#include <pybind11/pybind11.h>
#include <torch/library.h>
#include <torch/version.h>

#include <string>

#include "cpu/panel_gemm.h"
#include "fastrnn/schemas.h"

#ifdef FASTRNN_WITH_CUDA
namespace fastrnn {
namespace cuda {
std::string compiled_archs();  // csrc/cuda/build_info.cu
}  // namespace cuda
}  // namespace fastrnn
#endif

TORCH_LIBRARY(fastrnn, m) {
  m.set_python_module("fastrnn._ops");
  fastrnn::define_layer_ops(m);
}

PYBIND11_MODULE(_C, module) {
  module.doc() = "fastrnn compiled kernels; the ops live under torch.ops.fastrnn";
  module.def("build_info", [] {
    pybind11::dict info;
    info["torch"] = TORCH_VERSION;
    // The GEMM of each time step on the CPU in float (cpu/panel_gemm.h, cpu/recurrence.h PackedWeight).
    info["cpu_step_gemm"] = fastrnn::cpu::panel_gemm_kernel() != nullptr ? "fastrnn AVX2 panel kernel"
                                                                         : "BLAS (MKL packed sgemm where available)";
#ifdef FASTRNN_WITH_CUDA
    info["cuda"] = true;
    info["cuda_archs"] = fastrnn::cuda::compiled_archs();
#else
    info["cuda"] = false;
    info["cuda_archs"] = "";
#endif
    return info;
  });
}
