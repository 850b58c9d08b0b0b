// Every op schema, in one place (csrc/fastrnn.cpp defines them under fastrnn::; the test-only
// library of the device-generic engine, csrc/cpu/engine_cpu.cpp, under fastrnn_engine_test::).
// One op runs one layer over the whole sequence for D = 1 or 2 directions; shapes in
// fastrnn/engine.h and cpu/recurrence.h.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/library.h>

#include <string>

namespace fastrnn {

// Every op name, the one list (device_checks.h registers its checks on each; the backends register
// their kernels by these names). *_layer_no_grad: the same computation as *_layer, for calls that
// need no gradient (functional.py calls it then). It has a C++ autograd kernel that only refuses
// gradients (fastrnn.cpp), where *_layer's is Python's (fastrnn/_ops.py), which a small call paid
// ~11 us for in Python (of ~26 us for the whole op at H = 64).
inline constexpr const char* kLayerOps[] = {
    "lstm_layer",     "lstm_layer_backward",     "lstm_layer_no_grad",     "gru_layer",
    "gru_layer_backward", "gru_layer_no_grad",   "rnn_tanh_layer",         "rnn_tanh_layer_backward",
    "rnn_tanh_layer_no_grad", "rnn_relu_layer",  "rnn_relu_layer_backward", "rnn_relu_layer_no_grad"};
inline constexpr const char* kNoGradOps[] = {"lstm_layer_no_grad", "gru_layer_no_grad", "rnn_tanh_layer_no_grad",
                                             "rnn_relu_layer_no_grad"};

inline void define_layer_ops(torch::Library& m) {
  const std::string lstm_forward =
      "(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hh, "
      "Tensor? w_hr, Tensor? lengths, bool save_for_backward) -> (Tensor y, Tensor hn, Tensor cn, Tensor workspace)";
  m.def(("lstm_layer" + lstm_forward).c_str());
  m.def(("lstm_layer_no_grad" + lstm_forward).c_str());
  m.def(
      "lstm_layer_backward(Tensor grad_y, Tensor grad_hn, Tensor grad_cn, Tensor x, Tensor w_ih, Tensor? b_ih, "
      "Tensor h0, Tensor c0, Tensor w_hh, Tensor? b_hh, Tensor? w_hr, Tensor? lengths, Tensor y, Tensor workspace, "
      "bool need_grad_x) -> (Tensor grad_x, Tensor grad_w_ih, Tensor grad_b_ih, Tensor grad_h0, Tensor grad_c0, "
      "Tensor grad_w_hh, Tensor grad_b_hh, Tensor grad_w_hr)");
  const std::string forward =
      "(Tensor x, Tensor w_ih, Tensor? b_ih, Tensor h0, Tensor w_hh, Tensor? b_hh, Tensor? lengths, "
      "bool save_for_backward) -> (Tensor y, Tensor hn, Tensor workspace)";
  for (const std::string name : {"gru", "rnn_tanh", "rnn_relu"}) {
    m.def((name + "_layer" + forward).c_str());
    m.def((name + "_layer_no_grad" + forward).c_str());
    m.def((name +
           "_layer_backward(Tensor grad_y, Tensor grad_hn, Tensor x, Tensor w_ih, Tensor? b_ih, Tensor h0, "
          "Tensor w_hh, Tensor? b_hh, Tensor? lengths, Tensor y, Tensor workspace, bool need_grad_x) -> "
          "(Tensor grad_x, Tensor grad_w_ih, Tensor grad_b_ih, Tensor grad_h0, Tensor grad_w_hh, Tensor grad_b_hh)")
              .c_str());
  }
}

// One step of a cell, [B, I] and [B, H] in and out: one layer op call with T = 1, D = 1 (fastrnn.cpp: a
// CompositeImplicitAutograd kernel, so autograd, torch.compile and the fakes see the layer op it calls).
// What the cells run: the views and the op's choice (*_layer or *_layer_no_grad) in C++ cost a small call
// ~12 us less than in Python.
inline void define_cell_ops(torch::Library& m) {
  m.def("lstm_cell(Tensor x, Tensor h, Tensor c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) -> "
        "(Tensor h_next, Tensor c_next)");
  for (const char* name : {"gru", "rnn_tanh", "rnn_relu"}) {
    m.def((std::string(name) + "_cell(Tensor x, Tensor h, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh) "
                               "-> Tensor h_next").c_str());
  }
}

// The Autograd kernel of the *_layer_no_grad ops: a call that would need a gradient is an error (nothing
// would compute it); any other goes on to the backend, below autograd (as torch's own kernels run).
inline void refuse_gradients(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  if (at::GradMode::is_enabled()) {
    const size_t n = op.schema().arguments().size();
    for (auto it = stack->end() - static_cast<std::ptrdiff_t>(n); it != stack->end(); ++it) {
      TORCH_CHECK(!it->isTensor() || !it->toTensor().requires_grad(), op.schema().name(),
                  " computes no gradient, but an argument requires one; call the op without the _no_grad suffix "
                  "(its autograd formula is registered in fastrnn/_ops.py)");
    }
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

// m: a TORCH_LIBRARY_IMPL(namespace, Autograd, m) block.
inline void register_no_grad_autograd(torch::Library& m) {
  for (const char* name : kNoGradOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&refuse_gradients>());
  }
}

}  // namespace fastrnn
