// LSTM on the CPU: the op entry points and their registration (the work is in recurrence.h).
#include <torch/library.h>

#include "recurrence.h"

namespace fastrnn {
namespace cpu {
namespace {

constexpr const char* kForwardOp = "fastrnn::lstm_layer";
constexpr const char* kBackwardOp = "fastrnn::lstm_layer_backward";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_cpu(
    const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr,
    const c10::optional<at::Tensor>& lengths, bool save_for_backward) {
  return layer_forward<LstmTraits>(kForwardOp, x, w_ih, b_ih, h0, &c0, w_hh, b_hh, w_hr, lengths,
                                   save_for_backward);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lstm_layer_backward_cpu(const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& grad_cn,
                        const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
                        const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
                        const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr,
                        const c10::optional<at::Tensor>& lengths, const at::Tensor& y, const at::Tensor& workspace,
                        bool need_grad_x) {
  return layer_backward<LstmTraits>(kBackwardOp, grad_y, grad_hn, &grad_cn, x, w_ih, b_ih, h0, &c0, w_hh, b_hh, w_hr,
                                    lengths, y, workspace, need_grad_x);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("lstm_layer_no_grad", &lstm_layer_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
}

}  // namespace cpu
}  // namespace fastrnn
