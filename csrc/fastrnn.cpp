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

#ifdef FASTRNN_WITH_CUDA
namespace fastrnn {
namespace cuda {
std::string compiled_archs();  // csrc/cuda/build_info.cu
}  // namespace cuda
}  // namespace fastrnn
#endif

TORCH_LIBRARY(fastrnn, m) {
  m.set_python_module("fastrnn._ops");
  m.def(
      "lstm_layer(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hh, "
      "Tensor? w_hr, Tensor? lengths, bool save_for_backward) -> (Tensor y, Tensor hn, Tensor cn, Tensor workspace)");
  m.def(
      "lstm_layer_backward(Tensor grad_y, Tensor grad_hn, Tensor grad_cn, Tensor x, Tensor w_ih, Tensor? b_ih, "
      "Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hh, Tensor? w_hr, Tensor? lengths, Tensor y, Tensor workspace, "
      "bool need_grad_x) -> (Tensor grad_x, Tensor grad_w_ih, Tensor grad_b_ih, Tensor grad_h0, Tensor grad_c0, "
      "Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_w_hr)");
  for (const char* name : {"gru", "rnn_tanh", "rnn_relu"}) {
    m.def((std::string(name) +
           "_layer(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor? lengths, "
           "bool save_for_backward) -> (Tensor y, Tensor hn, Tensor workspace)")
              .c_str());
    m.def((std::string(name) +
           "_layer_backward(Tensor grad_y, Tensor grad_hn, Tensor x, Tensor w_ih, Tensor? b_ih, Tensor h0, "
           "Tensor w_hh, Tensor? b_hh, Tensor? lengths, Tensor y, Tensor workspace, bool need_grad_x) -> "
           "(Tensor grad_x, Tensor grad_w_ih, Tensor grad_b_ih, Tensor grad_h0, Tensor grad_w_hh, Tensor grad_b_hh)")
              .c_str());
  }
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
