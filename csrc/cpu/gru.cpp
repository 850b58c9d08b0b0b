// GRU on the CPU: the op entry points and their registration (the work is in recurrence.h).
#include <torch/library.h>

#include "recurrence.h"

namespace fastrnn {
namespace cpu {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
    bool save_for_backward) {
  auto out = layer_forward<GruTraits>("fastrnn::gru_layer", x, w_ih, b_ih, h0, nullptr, w_hh, b_hh, c10::nullopt,
                                      lengths, save_for_backward);
  return {std::get<0>(out), std::get<1>(out), std::get<3>(out)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& x, const at::Tensor& w_ih,
    const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths, const at::Tensor& y,
    const at::Tensor& workspace, bool need_grad_x) {
  return without_cell_state(layer_backward<GruTraits>("fastrnn::gru_layer_backward", grad_y, grad_hn, nullptr, x,
                                                      w_ih, b_ih, h0, nullptr, w_hh, b_hh, c10::nullopt, lengths, y,
                                                      workspace, need_grad_x));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("gru_layer", &gru_layer_cpu);
  m.impl("gru_layer_no_grad", &gru_layer_cpu);
  m.impl("gru_layer_backward", &gru_layer_backward_cpu);
}

}  // namespace cpu
}  // namespace fastrnn
