// Elman RNN (tanh and relu) on the CPU: the op entry points and their registration (the work
// is in recurrence.h).
#include <torch/library.h>

#include "recurrence.h"

namespace fastrnn {
namespace cpu {
namespace {

template <bool kRelu>
std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_layer_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
    bool save_for_backward) {
  auto out = layer_forward<RnnTraits<kRelu>>(kRelu ? "fastrnn::rnn_relu_layer" : "fastrnn::rnn_tanh_layer", x, w_ih,
                                             b_ih, h0, nullptr, w_hh, b_hh, c10::nullopt, lengths,
                                             save_for_backward);
  return {std::get<0>(out), std::get<1>(out), std::get<3>(out)};
}

template <bool kRelu>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& x, const at::Tensor& w_ih,
    const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths, const at::Tensor& y,
    const at::Tensor& workspace, bool need_grad_x) {
  return without_cell_state(layer_backward<RnnTraits<kRelu>>(
      kRelu ? "fastrnn::rnn_relu_layer_backward" : "fastrnn::rnn_tanh_layer_backward", grad_y, grad_hn, nullptr, x,
      w_ih, b_ih, h0, nullptr, w_hh, b_hh, c10::nullopt, lengths, y, workspace, need_grad_x));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("rnn_tanh_layer", &rnn_layer_cpu<false>);
  m.impl("rnn_tanh_layer_no_grad", &rnn_layer_cpu<false>);
  m.impl("rnn_tanh_layer_backward", &rnn_layer_backward_cpu<false>);
  m.impl("rnn_relu_layer", &rnn_layer_cpu<true>);
  m.impl("rnn_relu_layer_no_grad", &rnn_layer_cpu<true>);
  m.impl("rnn_relu_layer_backward", &rnn_layer_backward_cpu<true>);
}

}  // namespace cpu
}  // namespace fastrnn
