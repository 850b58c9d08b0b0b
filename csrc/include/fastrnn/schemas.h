// Every op schema, in one place (csrc/fastrnn.cpp defines them under fastrnn::; the test-only
// library of the device-generic engine, csrc/cpu/engine_cpu.cpp, under fastrnn_engine_test::).
// One op runs one layer over the whole sequence for D = 1 or 2 directions; shapes in
// fastrnn/engine.h and cpu/recurrence.h.
#pragma once

#include <torch/library.h>

#include <string>

namespace fastrnn {

inline void define_layer_ops(torch::Library& m) {
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

}  // namespace fastrnn
