// GRU on the CPU: the cell policy for the shared recurrence engine, and the op registration.
#include <torch/library.h>

#include "recurrence.h"

namespace fastrnn {
namespace cpu {
namespace {

// Workspace row per step: r, z, n (activated gates) and W_hn h + b_hn, each [H].
template <typename scalar_t>
struct GruCell {
  using opmath_t = at::opmath_type<scalar_t>;
  static constexpr int64_t kGates = 3;
  static constexpr int64_t kSaved = 4;
  static constexpr int64_t kCellOffset = 0;
  static constexpr bool kHasCellState = false;
  static constexpr bool kHasDirectPath = true;  // h_prev reaches h through z, not only W_hh
  static constexpr bool kSeparateRecurrentGrad = true;  // b_hn sits inside r * (...)

  static void forward_row(const FwdRow<scalar_t>& r, int64_t H) {
    for (int64_t j = 0; j < H; ++j) {
      opmath_t hproj[3];
      for (int q = 0; q < 3; ++q) {
        const int64_t k = q * H + j;
        hproj[q] = static_cast<opmath_t>(r.hg[k]) + (r.bias ? static_cast<opmath_t>(r.bias[k]) : opmath_t(0));
      }
      const auto s = cells::gru_forward<opmath_t>(r.x[j], r.x[H + j], r.x[2 * H + j], hproj[0], hproj[1], hproj[2],
                                                  static_cast<opmath_t>(r.h_prev[j]));
      r.h_out[j] = static_cast<scalar_t>(s.h);
      if (r.y_out) r.y_out[j] = static_cast<scalar_t>(s.h);
      if (r.saved) {
        r.saved[j] = static_cast<scalar_t>(s.r);
        r.saved[H + j] = static_cast<scalar_t>(s.z);
        r.saved[2 * H + j] = static_cast<scalar_t>(s.n);
        r.saved[3 * H + j] = static_cast<scalar_t>(hproj[2]);
      }
    }
  }

  static void backward_row(const BwdRow<scalar_t>& r, int64_t H) {
    for (int64_t j = 0; j < H; ++j) {
      const opmath_t dh = static_cast<opmath_t>(r.dh_a[j]) + (r.dh_b ? static_cast<opmath_t>(r.dh_b[j]) : opmath_t(0));
      const auto b = cells::gru_backward<opmath_t>(r.saved[j], r.saved[H + j], r.saved[2 * H + j], r.saved[3 * H + j],
                                                   static_cast<opmath_t>(r.h_prev[j]), dh);
      r.dgx[j] = r.dgh[j] = static_cast<scalar_t>(b.d_r);
      r.dgx[H + j] = r.dgh[H + j] = static_cast<scalar_t>(b.d_z);
      r.dgx[2 * H + j] = static_cast<scalar_t>(b.d_xn);
      r.dgh[2 * H + j] = static_cast<scalar_t>(b.d_hn);
      r.dh_direct[j] = static_cast<scalar_t>(b.d_h_prev);
    }
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_cpu(const at::Tensor& x_proj, const at::Tensor& h0,
                                                             const at::Tensor& w_hh,
                                                             const c10::optional<at::Tensor>& b_hh,
                                                             const c10::optional<at::Tensor>& lengths,
                                                             bool save_for_backward) {
  auto out = layer_forward<GruCell>("fastrnn::gru_layer", x_proj, h0, nullptr, w_hh, b_hh, c10::nullopt, lengths,
                                    save_for_backward);
  return {std::get<0>(out), std::get<1>(out), std::get<3>(out)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_layer_backward_cpu(
    const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& h0, const at::Tensor& w_hh,
    const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths, const at::Tensor& y,
    const at::Tensor& workspace) {
  auto g = layer_backward<GruCell>("fastrnn::gru_layer_backward", grad_y, grad_hn, nullptr, h0, nullptr, w_hh, b_hh,
                                   c10::nullopt, lengths, y, workspace);
  return {std::get<0>(g), std::get<1>(g), std::get<3>(g), std::get<4>(g)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("gru_layer", &gru_layer_cpu);
  m.impl("gru_layer_backward", &gru_layer_backward_cpu);
}

}  // namespace cpu
}  // namespace fastrnn
