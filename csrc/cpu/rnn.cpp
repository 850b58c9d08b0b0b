// Elman RNN (tanh and relu) on the CPU: the cell policy for the shared recurrence engine,
// and the op registration.
#include <torch/library.h>

#include "recurrence.h"

namespace fastrnn {
namespace cpu {
namespace {

// Nothing saved: backward needs only the output h, which y already holds.
template <bool kRelu>
struct Rnn {
  template <typename scalar_t>
  struct Cell {
    using opmath_t = at::opmath_type<scalar_t>;
    static constexpr int64_t kGates = 1;
    static constexpr int64_t kSaved = 0;
    static constexpr int64_t kCellOffset = 0;
    static constexpr bool kHasCellState = false;
    static constexpr bool kHasDirectPath = false;
    static constexpr bool kSeparateRecurrentGrad = false;

    static void forward_row(const FwdRow<scalar_t>& r, int64_t H) {
      for (int64_t j = 0; j < H; ++j) {
        const opmath_t pre = static_cast<opmath_t>(r.x[j]) + static_cast<opmath_t>(r.hg[j]) +
                             (r.bias ? static_cast<opmath_t>(r.bias[j]) : opmath_t(0));
        const scalar_t h = static_cast<scalar_t>(cells::rnn_forward<kRelu, opmath_t>(pre));
        r.h_out[j] = h;
        if (r.y_out) r.y_out[j] = h;
      }
    }

    static void backward_row(const BwdRow<scalar_t>& r, int64_t H) {
      for (int64_t j = 0; j < H; ++j) {
        const opmath_t dh =
            static_cast<opmath_t>(r.dh_a[j]) + (r.dh_b ? static_cast<opmath_t>(r.dh_b[j]) : opmath_t(0));
        r.dgx[j] = static_cast<scalar_t>(cells::rnn_backward<kRelu, opmath_t>(static_cast<opmath_t>(r.h[j]), dh));
      }
    }
  };
};

template <bool kRelu>
std::tuple<at::Tensor, at::Tensor, at::Tensor> rnn_layer_cpu(const at::Tensor& x_proj, const at::Tensor& h0,
                                                             const at::Tensor& w_hh,
                                                             const c10::optional<at::Tensor>& b_hh,
                                                             const c10::optional<at::Tensor>& lengths,
                                                             bool save_for_backward) {
  auto out = layer_forward<Rnn<kRelu>::template Cell>(kRelu ? "fastrnn::rnn_relu_layer" : "fastrnn::rnn_tanh_layer",
                                                      x_proj, h0, nullptr, w_hh, b_hh, c10::nullopt, lengths,
                                                      save_for_backward);
  return {std::get<0>(out), std::get<1>(out), std::get<3>(out)};
}

template <bool kRelu>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rnn_layer_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& h0, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths, const at::Tensor& y,
    const at::Tensor& workspace) {
  auto g = layer_backward<Rnn<kRelu>::template Cell>(
      kRelu ? "fastrnn::rnn_relu_layer_backward" : "fastrnn::rnn_tanh_layer_backward", grad_y, grad_hn, nullptr, h0,
      nullptr, w_hh, b_hh, c10::nullopt, lengths, y, workspace);
  return {std::get<0>(g), std::get<1>(g), std::get<3>(g), std::get<4>(g)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("rnn_tanh_layer", &rnn_layer_cpu<false>);
  m.impl("rnn_tanh_layer_backward", &rnn_layer_backward_cpu<false>);
  m.impl("rnn_relu_layer", &rnn_layer_cpu<true>);
  m.impl("rnn_relu_layer_backward", &rnn_layer_backward_cpu<true>);
}

}  // namespace cpu
}  // namespace fastrnn
