// LSTM on the CPU: the cell policy for the shared recurrence engine, and the op registration.
#include <torch/library.h>

#include "recurrence.h"

namespace fastrnn {
namespace cpu {
namespace {

// Workspace row per step: i, f, g, o (activated gates) and c, each [H].
template <typename scalar_t>
struct LstmCell {
  using opmath_t = at::opmath_type<scalar_t>;
  static constexpr int64_t kGates = 4;
  static constexpr int64_t kSaved = 5;
  static constexpr int64_t kCellOffset = 4;
  static constexpr bool kHasCellState = true;
  static constexpr bool kHasDirectPath = false;
  static constexpr bool kSeparateRecurrentGrad = false;

  static void forward_row(const FwdRow<scalar_t>& r, int64_t H) {
    for (int64_t j = 0; j < H; ++j) {
      opmath_t pre[4];
      for (int q = 0; q < 4; ++q) {
        const int64_t k = q * H + j;
        pre[q] = static_cast<opmath_t>(r.x[k]) + static_cast<opmath_t>(r.hg[k]) +
                 (r.bias ? static_cast<opmath_t>(r.bias[k]) : opmath_t(0));
      }
      const auto s = cells::lstm_forward<opmath_t>(pre[0], pre[1], pre[2], pre[3], static_cast<opmath_t>(r.c[j]));
      r.c[j] = static_cast<scalar_t>(s.c);
      r.h_out[j] = static_cast<scalar_t>(s.h);
      if (r.y_out) r.y_out[j] = static_cast<scalar_t>(s.h);
      if (r.saved) {
        r.saved[j] = static_cast<scalar_t>(s.i);
        r.saved[H + j] = static_cast<scalar_t>(s.f);
        r.saved[2 * H + j] = static_cast<scalar_t>(s.g);
        r.saved[3 * H + j] = static_cast<scalar_t>(s.o);
        r.saved[4 * H + j] = static_cast<scalar_t>(s.c);
      }
    }
  }

  static void backward_row(const BwdRow<scalar_t>& r, int64_t H) {
    for (int64_t j = 0; j < H; ++j) {
      const opmath_t i = r.saved[j], f = r.saved[H + j], g = r.saved[2 * H + j], o = r.saved[3 * H + j];
      const opmath_t c = r.saved[4 * H + j];
      const opmath_t dh = static_cast<opmath_t>(r.dh_a[j]) + (r.dh_b ? static_cast<opmath_t>(r.dh_b[j]) : opmath_t(0));
      const auto b = cells::lstm_backward<opmath_t>(i, f, g, o, c, static_cast<opmath_t>(r.c_prev[j]), dh,
                                                    static_cast<opmath_t>(r.dc[j]));
      r.dgx[j] = static_cast<scalar_t>(b.d_i);
      r.dgx[H + j] = static_cast<scalar_t>(b.d_f);
      r.dgx[2 * H + j] = static_cast<scalar_t>(b.d_g);
      r.dgx[3 * H + j] = static_cast<scalar_t>(b.d_o);
      r.dc[j] = static_cast<scalar_t>(b.d_c_prev);
      if (r.r_out) r.r_out[j] = static_cast<scalar_t>(o * cells::tanh_(c));
    }
  }
};

constexpr const char* kForwardOp = "fastrnn::lstm_layer";
constexpr const char* kBackwardOp = "fastrnn::lstm_layer_backward";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_cpu(
    const at::Tensor& x_proj, const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr,
    const c10::optional<at::Tensor>& lengths, bool save_for_backward) {
  return layer_forward<LstmCell>(kForwardOp, x_proj, h0, &c0, w_hh, b_hh, w_hr, lengths, save_for_backward);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& grad_cn, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths, const at::Tensor& y,
    const at::Tensor& workspace) {
  return layer_backward<LstmCell>(kBackwardOp, grad_y, grad_hn, &grad_cn, h0, &c0, w_hh, b_hh, w_hr, lengths, y,
                                  workspace);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("lstm_layer", &lstm_layer_cpu);
  m.impl("lstm_layer_backward", &lstm_layer_backward_cpu);
}

}  // namespace cpu
}  // namespace fastrnn
