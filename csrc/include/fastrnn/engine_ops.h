// The op entry points of the device-generic engine (fastrnn/engine.h) for a Launcher, with the
// signatures of the schemas in fastrnn/schemas.h, and their registration into a library.
#pragma once

#include <torch/library.h>

#include "fastrnn/engine.h"

namespace fastrnn {
namespace engine {

template <typename Launcher>
struct Ops {
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm(
      const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0,
      const at::Tensor& c0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
      const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths, bool save) {
    return layer_forward<Launcher, LstmCell>("fastrnn::lstm_layer", x, w_ih, b_ih, h0, &c0, w_hh, b_hh, w_hr, lengths,
                                             save);
  }
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
  lstm_backward(const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& grad_cn, const at::Tensor& x,
                const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0,
                const at::Tensor& c0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
                const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths, const at::Tensor& y,
                const at::Tensor& workspace, bool need_grad_x) {
    return layer_backward<Launcher, LstmCell>("fastrnn::lstm_layer_backward", grad_y, grad_hn, &grad_cn, x, w_ih, b_ih,
                                              h0, &c0, w_hh, b_hh, w_hr, lengths, y, workspace, need_grad_x);
  }
  // GRU and RNN: the same op signatures, one cell each.
  template <typename Cell, const char* kForwardName, const char* kBackwardName>
  struct NoCellState {
    static std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
        const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0,
        const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
        bool save) {
      auto out = layer_forward<Launcher, Cell>(kForwardName, x, w_ih, b_ih, h0, nullptr, w_hh, b_hh, c10::nullopt,
                                               lengths, save);
      return {std::get<0>(out), std::get<1>(out), std::get<3>(out)};
    }
    static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
        const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& x, const at::Tensor& w_ih,
        const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0, const at::Tensor& w_hh,
        const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths, const at::Tensor& y,
        const at::Tensor& workspace, bool need_grad_x) {
      return without_cell_state(layer_backward<Launcher, Cell>(kBackwardName, grad_y, grad_hn, nullptr, x, w_ih, b_ih,
                                                               h0, nullptr, w_hh, b_hh, c10::nullopt, lengths, y,
                                                               workspace, need_grad_x));
    }
  };
};

inline constexpr char kGruName[] = "fastrnn::gru_layer", kGruBackwardName[] = "fastrnn::gru_layer_backward";
inline constexpr char kRnnTanhName[] = "fastrnn::rnn_tanh_layer",
                      kRnnTanhBackwardName[] = "fastrnn::rnn_tanh_layer_backward";
inline constexpr char kRnnReluName[] = "fastrnn::rnn_relu_layer",
                      kRnnReluBackwardName[] = "fastrnn::rnn_relu_layer_backward";

// m.impl of every op for the Launcher (m: a TORCH_LIBRARY_IMPL block of the Launcher's dispatch key).
template <typename Launcher>
void register_ops(torch::Library& m) {
  using O = Ops<Launcher>;
  using Gru = typename O::template NoCellState<GruCell, kGruName, kGruBackwardName>;
  using RnnTanh = typename O::template NoCellState<RnnCell<false>, kRnnTanhName, kRnnTanhBackwardName>;
  using RnnRelu = typename O::template NoCellState<RnnCell<true>, kRnnReluName, kRnnReluBackwardName>;
  m.impl("lstm_layer", &O::lstm);
  m.impl("lstm_layer_no_grad", &O::lstm);
  m.impl("lstm_layer_backward", &O::lstm_backward);
  m.impl("gru_layer", &Gru::forward);
  m.impl("gru_layer_no_grad", &Gru::forward);
  m.impl("gru_layer_backward", &Gru::backward);
  m.impl("rnn_tanh_layer", &RnnTanh::forward);
  m.impl("rnn_tanh_layer_no_grad", &RnnTanh::forward);
  m.impl("rnn_tanh_layer_backward", &RnnTanh::backward);
  m.impl("rnn_relu_layer", &RnnRelu::forward);
  m.impl("rnn_relu_layer_no_grad", &RnnRelu::forward);
  m.impl("rnn_relu_layer_backward", &RnnRelu::backward);
}

}  // namespace engine
}  // namespace fastrnn
