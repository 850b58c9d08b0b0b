// The device-generic layer engine: one layer over the whole sequence (one or both directions),
// every GEMM an ATen op (cuBLAS on CUDA), every per-step pointwise pass a functor over the
// elements of one step, run by a Launcher policy:
//
//   struct Launcher {
//     // The device it runs on; on CUDA also the path chosen for the call (fastrnn/cuda_path.h).
//     static void check_call(const char* op, const LayerSizes& s, const at::Tensor& x);
//     using Guard = ...;  // constructed from x for the whole op (CUDA: the device guard, and
//                         // float32 GEMMs in the precision of torch.nn's cuDNN RNNs)
//     static at::Tensor lengths_for_functors(const at::Tensor& lengths, const at::Tensor& x);
//     template <class F> static void run(int64_t n, const F& f);        // f(i) for i in [0, n)
//   };
//
// The CUDA ops (csrc/cuda/) run it with a grid-stride kernel on the current stream. The CPU can
// run it too (csrc/cpu/engine_cpu.cpp, registered as the test-only ops fastrnn_engine_test::*),
// which is how its logic is checked on machines without a GPU (tests/test_engine.py compares it
// with the CPU kernels in float64).
//
// Shapes (contiguous): x [T, B, I], w_ih [D, G*H, I], b_ih [D, G*H], h0 [D, B, P], c0 [D, B, H],
// w_hh [D, G*H, P], b_hh [D, G*H], w_hr [D, P, H]; lengths [B] on the host, and a copy on the
// device for the functors. Outputs y [T, B, D*P], hn [D, B, P], cn [D, B, H], workspace
// [D, T, B, kSaved*H]: per step and row, LSTM saves i, f, g, o, c; GRU r, z, n and W_hn h + b_hn;
// RNN nothing (its backward reads y).
//
// Both directions of a bidirectional layer run at once: at processing step k the forward
// direction is at time k and the reverse one at T-1-k, and each step's GEMMs are batched over
// the direction dimension (bmm over [D, ...]) and its pointwise pass is one launch over both
// (PerDirection). Every step multiplies all B rows (rows past their sequence's end included;
// their results are not used), so the loop needs nothing from the host but T. Nothing is
// allocated inside the time loops, and nothing waits for the device.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>
#include <limits>
#include <tuple>
#include <utility>
#include <vector>

#include "fastrnn/cells.h"
#include "fastrnn/checks.h"
#include "fastrnn/layer_io.h"

namespace fastrnn {
namespace engine {

// When each time step is processed in one direction, and which rows take part (see the CPU's StepIndex).
struct Steps {
  int64_t T;
  bool reverse;
  const int64_t* lengths;  // readable by the functors; nullptr: every sequence has length T
  FASTRNN_HOST_DEVICE int64_t length(int64_t b) const { return lengths ? lengths[b] : T; }
  FASTRNN_HOST_DEVICE bool active(int64_t t, int64_t b) const { return t < length(b); }
  FASTRNN_HOST_DEVICE bool first(int64_t t, int64_t b) const { return reverse ? t == length(b) - 1 : t == 0; }
  FASTRNN_HOST_DEVICE int64_t prev(int64_t t) const { return reverse ? t + 1 : t - 1; }
  // The time of the k-th step in processing order.
  FASTRNN_HOST_DEVICE int64_t time(int64_t k) const { return reverse ? T - 1 - k : k; }
};

// One launch for both directions: elements [0, n) go to dir[0], [n, 2n) to dir[1] (with one
// direction only dir[0] is used).
template <typename F>
struct PerDirection {
  F dir[2];
  int64_t n;  // elements per direction
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    if (i < n) {
      dir[0](i);
    } else {
      dir[1](i - n);
    }
  }
};

// ---------------------------------------------------------------- forward functors

// One direction at step t. Row b of this direction's y (or grad_y) is at y + b * y_stride.
template <typename scalar_t>
struct ForwardStep {
  Steps steps;
  int64_t t, H, P;
  const scalar_t* xp;      // W_ih x_t + b_ih: this direction's G*H columns of row b at xp + b * xp_stride
  int64_t xp_stride;
  const scalar_t* hg;      // [B, G*H] h_prev @ W_hh^T (no bias)
  const scalar_t* b_hh;    // [G*H] or nullptr
  const scalar_t* h_prev;  // [B, P]
  scalar_t* h_next;        // [B, P]; unused with a projection (ProjectionCommit writes it)
  scalar_t* c;             // [B, H], updated in place (LSTM)
  scalar_t* r;             // [B, H]: the unprojected output, with a projection; else nullptr
  scalar_t* y;             // this direction's columns of y at step t
  int64_t y_stride;
  scalar_t* saved;         // [B, kSaved*H] of step t, or nullptr

  // The recurrent term of gate column col (W_hh h + b_hh), and the input term (W_ih x + b_ih).
  FASTRNN_HOST_DEVICE at::opmath_type<scalar_t> rec(int64_t b, int64_t GH, int64_t col) const {
    using acc_t = at::opmath_type<scalar_t>;
    return static_cast<acc_t>(hg[b * GH + col]) + (b_hh ? static_cast<acc_t>(b_hh[col]) : acc_t(0));
  }
  FASTRNN_HOST_DEVICE at::opmath_type<scalar_t> in(int64_t b, int64_t GH, int64_t col) const {
    return static_cast<at::opmath_type<scalar_t>>(xp[b * xp_stride + col]);
  }
  // The new h of unit j, or r with a projection; past the sequence's end, the state carries over
  // and y is zero.
  FASTRNN_HOST_DEVICE void write_h(int64_t b, int64_t j, bool active, at::opmath_type<scalar_t> h) const {
    if (r) {
      r[b * H + j] = active ? static_cast<scalar_t>(h) : scalar_t(0);
      return;
    }
    h_next[b * P + j] = active ? static_cast<scalar_t>(h) : h_prev[b * P + j];
    y[b * y_stride + j] = active ? static_cast<scalar_t>(h) : scalar_t(0);
  }
  // Past the sequence's end: the state carries over (write_h), the saved values of unit j are zero.
  FASTRNN_HOST_DEVICE void inactive(int64_t b, int64_t j, int kSaved) const {
    write_h(b, j, false, at::opmath_type<scalar_t>(0));
    for (int q = 0; saved && q < kSaved; ++q) saved[b * kSaved * H + q * H + j] = scalar_t(0);
  }
};

template <typename scalar_t>
struct LstmForwardFn {
  ForwardStep<scalar_t> s;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H, GH = 4 * H, b = i / H, j = i % H;
    const bool active = s.steps.active(s.t, b);
    if (!active) {
      s.inactive(b, j, 5);
      return;
    }
    scalar_t* sv = s.saved ? s.saved + b * 5 * H : nullptr;
    const auto pre = [&](int q) { return s.in(b, GH, q * H + j) + s.rec(b, GH, q * H + j); };
    const auto f = cells::lstm_forward<acc_t>(pre(0), pre(1), pre(2), pre(3), static_cast<acc_t>(s.c[b * H + j]));
    s.c[b * H + j] = static_cast<scalar_t>(f.c);
    s.write_h(b, j, true, f.h);
    if (sv) {
      const acc_t values[5] = {f.i, f.f, f.g, f.o, f.c};
      for (int q = 0; q < 5; ++q) sv[q * H + j] = static_cast<scalar_t>(values[q]);
    }
  }
};

template <typename scalar_t>
struct GruForwardFn {
  ForwardStep<scalar_t> s;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H, GH = 3 * H, b = i / H, j = i % H;
    const bool active = s.steps.active(s.t, b);
    if (!active) {
      s.inactive(b, j, 4);
      return;
    }
    scalar_t* sv = s.saved ? s.saved + b * 4 * H : nullptr;
    const acc_t h_n = s.rec(b, GH, 2 * H + j);
    const auto f = cells::gru_forward<acc_t>(s.in(b, GH, j), s.in(b, GH, H + j), s.in(b, GH, 2 * H + j),
                                             s.rec(b, GH, j), s.rec(b, GH, H + j), h_n,
                                             static_cast<acc_t>(s.h_prev[b * s.P + j]));
    s.write_h(b, j, true, f.h);
    if (sv) {
      const acc_t values[4] = {f.r, f.z, f.n, h_n};
      for (int q = 0; q < 4; ++q) sv[q * H + j] = static_cast<scalar_t>(values[q]);
    }
  }
};

template <bool kRelu, typename scalar_t>
struct RnnForwardFn {
  ForwardStep<scalar_t> s;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H, b = i / H, j = i % H;
    const bool active = s.steps.active(s.t, b);
    s.write_h(b, j, active, active ? cells::rnn_forward<kRelu, acc_t>(s.in(b, H, j) + s.rec(b, H, j)) : acc_t(0));
  }
};

// With a projection: h = r @ W_hr^T (in proj, [B, P]) becomes the state and the output.
template <typename scalar_t>
struct ProjectionCommitFn {
  Steps steps;
  int64_t t, P;
  const scalar_t* proj;    // [B, P]
  const scalar_t* h_prev;  // [B, P]
  scalar_t* h_next;        // [B, P]
  scalar_t* y;
  int64_t y_stride;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t b = i / P, p = i % P;
    const bool active = steps.active(t, b);
    h_next[i] = active ? proj[i] : h_prev[i];
    y[b * y_stride + p] = active ? proj[i] : scalar_t(0);
  }
};

// ---------------------------------------------------------------- backward functors

// One direction at step t of the reverse-time loop. dh_cur is dL/dh_t arriving from later steps
// (without this step's own output gradient, which is in gy); the functors write the gate
// gradients and start dh_next = dL/dh_{t-1} with what bypasses W_hh (the GEMM adds the rest).
template <typename scalar_t>
struct BackwardStep {
  Steps steps;
  int64_t t, B, H, P;
  const scalar_t* saved;     // [T, B, kSaved*H] of this direction
  const scalar_t* y;         // [T, B, D*P] at this direction's columns
  const scalar_t* gy;        // grad_y, the same layout as y
  int64_t y_stride;          // D*P
  const scalar_t* h0;        // [B, P]
  const scalar_t* c0;        // [B, H] (LSTM)
  const scalar_t* dh_cur;    // [B, P]
  const scalar_t* dr;        // [B, H]: dL/dr with a projection (dh @ W_hr), else nullptr
  scalar_t* dh_next;         // [B, P]; with a projection ProjectionGradFn fills it
  scalar_t* dc;              // [B, H] (LSTM), updated in place
  scalar_t* dgx;             // gradients of the input projection at step t: row b at dgx + b * dgx_stride
  int64_t dgx_stride;
  scalar_t* dgh;             // [B, G*H]: of the recurrent one (GRU's differ; other cells write the same values)
  bool dgh_is_dgx;           // one buffer: written once
  scalar_t* r_out;           // [B, H] of step t: r recomputed for W_hr's gradient, or nullptr

  FASTRNN_HOST_DEVICE const scalar_t* saved_row(int64_t time, int64_t b, int64_t width) const {
    return saved + (time * B + b) * width;
  }
  // dL/dh_t of unit j (P == H: no projection).
  FASTRNN_HOST_DEVICE at::opmath_type<scalar_t> dh(int64_t b, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    if (dr) return static_cast<acc_t>(dr[b * H + j]);
    return static_cast<acc_t>(dh_cur[b * P + j]) + static_cast<acc_t>(gy[(t * B + b) * y_stride + j]);
  }
  // Gate q's gradient of unit j: d_in for the input projection, d_rec for the recurrent one.
  FASTRNN_HOST_DEVICE void write_gate(int64_t b, int64_t G, int64_t q, int64_t j, at::opmath_type<scalar_t> d_in,
                                      at::opmath_type<scalar_t> d_rec) const {
    dgx[b * dgx_stride + q * H + j] = static_cast<scalar_t>(d_in);
    if (!dgh_is_dgx) dgh[b * G * H + q * H + j] = static_cast<scalar_t>(d_rec);
  }
  // Past the sequence's end: no gate gradients, and dL/dh passes through untouched.
  FASTRNN_HOST_DEVICE void inactive(int64_t b, int64_t j, int64_t G) const {
    for (int64_t q = 0; q < G; ++q) write_gate(b, G, q, j, 0, 0);
    if (!dr) dh_next[b * P + j] = dh_cur[b * P + j];
    if (r_out) r_out[b * H + j] = scalar_t(0);
  }
};

template <typename scalar_t>
struct LstmBackwardFn {
  BackwardStep<scalar_t> s;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H, b = i / H, j = i % H;
    if (!s.steps.active(s.t, b)) {
      s.inactive(b, j, 4);
      return;
    }
    const scalar_t* sv = s.saved_row(s.t, b, 5 * H);
    const acc_t ig = sv[j], fg = sv[H + j], gg = sv[2 * H + j], og = sv[3 * H + j], c = sv[4 * H + j];
    const acc_t c_prev = s.steps.first(s.t, b) ? static_cast<acc_t>(s.c0[b * H + j])
                                               : static_cast<acc_t>(s.saved_row(s.steps.prev(s.t), b, 5 * H)[4 * H + j]);
    const auto g = cells::lstm_backward<acc_t>(ig, fg, gg, og, c, c_prev, s.dh(b, j), static_cast<acc_t>(s.dc[b * H + j]));
    const acc_t dgates[4] = {g.d_i, g.d_f, g.d_g, g.d_o};
    for (int q = 0; q < 4; ++q) s.write_gate(b, 4, q, j, dgates[q], dgates[q]);
    s.dc[b * H + j] = static_cast<scalar_t>(g.d_c_prev);
    if (!s.dr) s.dh_next[b * s.P + j] = scalar_t(0);  // LSTM's h reaches h_prev only through W_hh
    if (s.r_out) s.r_out[b * H + j] = static_cast<scalar_t>(og * cells::tanh_(c));
  }
};

template <typename scalar_t>
struct GruBackwardFn {
  BackwardStep<scalar_t> s;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H, b = i / H, j = i % H;
    if (!s.steps.active(s.t, b)) {
      s.inactive(b, j, 3);
      return;
    }
    const scalar_t* sv = s.saved_row(s.t, b, 4 * H);
    const acc_t h_prev = s.steps.first(s.t, b)
                             ? static_cast<acc_t>(s.h0[b * s.P + j])
                             : static_cast<acc_t>(s.y[(s.steps.prev(s.t) * s.B + b) * s.y_stride + j]);
    const auto g = cells::gru_backward<acc_t>(sv[j], sv[H + j], sv[2 * H + j], sv[3 * H + j], h_prev, s.dh(b, j));
    s.write_gate(b, 3, 0, j, g.d_r, g.d_r);
    s.write_gate(b, 3, 1, j, g.d_z, g.d_z);
    s.write_gate(b, 3, 2, j, g.d_xn, g.d_hn);
    s.dh_next[b * s.P + j] = static_cast<scalar_t>(g.d_h_prev);
  }
};

template <bool kRelu, typename scalar_t>
struct RnnBackwardFn {
  BackwardStep<scalar_t> s;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H, b = i / H, j = i % H;
    if (!s.steps.active(s.t, b)) {
      s.inactive(b, j, 1);
      return;
    }
    const acc_t h = s.y[(s.t * s.B + b) * s.y_stride + j];
    const acc_t d = cells::rnn_backward<kRelu, acc_t>(h, s.dh(b, j));
    s.write_gate(b, 1, 0, j, d, d);
    s.dh_next[b * s.P + j] = scalar_t(0);
  }
};

// With a projection, before the cell's functor: dL/dh_t in P-space (dh_all[t], zero past the
// end), and dh_next's start (dL/dh passes through past the end; else W_hh brings all of it).
template <typename scalar_t>
struct ProjectionGradFn {
  Steps steps;
  int64_t t, B, P;
  const scalar_t* dh_cur;  // [B, P]
  const scalar_t* gy;      // this direction's columns of grad_y
  int64_t y_stride;
  scalar_t* dh_t;          // [B, P]: dh_all[t]
  scalar_t* dh_next;       // [B, P]
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t b = i / P, p = i % P;
    const bool active = steps.active(t, b);
    dh_t[i] = active ? static_cast<scalar_t>(static_cast<acc_t>(dh_cur[i]) +
                                             static_cast<acc_t>(gy[(t * B + b) * y_stride + p]))
                     : scalar_t(0);
    dh_next[i] = active ? scalar_t(0) : dh_cur[i];
  }
};

// out[k, b] = the state sequence b entered step t with (h0 at its first step), zero past its end:
// the right operand of W_hh's gradient, in the order of the gate gradients it multiplies: by
// processing position (t = steps.time(k)) or by time (t = k).
template <typename scalar_t>
struct PrevStatesFn {
  Steps steps;
  int64_t B, P;
  const scalar_t* y;  // this direction's columns
  int64_t y_stride;
  const scalar_t* h0;  // [B, P]
  scalar_t* out;       // [T, B, P]
  bool processing_order;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t k = i / (B * P), t = processing_order ? steps.time(k) : k, b = (i / P) % B, p = i % P;
    out[i] = !steps.active(t, b)  ? scalar_t(0)
             : steps.first(t, b) ? h0[b * P + p]
                                 : y[(steps.prev(t) * B + b) * y_stride + p];
  }
};

// ---------------------------------------------------------------- cells

struct LstmCell {
  static constexpr int64_t kGates = 4, kSaved = 5;
  static constexpr bool kHasCellState = true, kSeparateRecurrentGrad = false;
  template <typename s> using Forward = LstmForwardFn<s>;
  template <typename s> using Backward = LstmBackwardFn<s>;
};
struct GruCell {
  static constexpr int64_t kGates = 3, kSaved = 4;
  static constexpr bool kHasCellState = false, kSeparateRecurrentGrad = true;
  template <typename s> using Forward = GruForwardFn<s>;
  template <typename s> using Backward = GruBackwardFn<s>;
};
template <bool kRelu>
struct RnnCell {
  static constexpr int64_t kGates = 1, kSaved = 0;
  static constexpr bool kHasCellState = false, kSeparateRecurrentGrad = false;
  template <typename s> using Forward = RnnForwardFn<kRelu, s>;
  template <typename s> using Backward = RnnBackwardFn<kRelu, s>;
};

// ---------------------------------------------------------------- the layer

// An internal buffer; NaN-filled under FASTRNN_DEBUG=1 like the outputs.
inline at::Tensor buffer(const at::Tensor& like, at::IntArrayRef sizes) { return new_output(like, sizes); }

// lengths as the functors read them (on CUDA: copied to x's device once per call, before the loop).
template <typename Launcher>
at::Tensor device_lengths(const c10::optional<at::Tensor>& lengths, const at::Tensor& x) {
  return lengths.has_value() ? Launcher::lengths_for_functors(lengths->contiguous(), x) : at::Tensor();
}

// A pointer's offset for direction d, as a per-direction functor's base.
template <typename scalar_t>
scalar_t* at_offset(const at::Tensor& t, int64_t offset) {
  return t.defined() ? t.data_ptr<scalar_t>() + offset : nullptr;
}

template <typename Launcher, typename Cell, typename scalar_t>
void forward(const LayerSizes& s, const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
             const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
             const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr,
             const at::Tensor& lengths_dev, bool save, at::Tensor& y, at::Tensor& hn, at::Tensor& cn,
             at::Tensor& saved) {
  const int64_t T = s.T, B = s.B, H = s.H, P = s.P, D = s.D, GH = Cell::kGates * H, I = x.size(2);
  // Both directions' input projections in one GEMM: xp [T*B, D*G*H], direction d in columns d*G*H...
  at::Tensor xp = buffer(x, {T * B, D * GH});
  if (b_ih.has_value()) {
    at::addmm_out(xp, b_ih->view({D * GH}), x.view({T * B, I}), w_ih.view({D * GH, I}).t());
  } else {
    at::mm_out(xp, x.view({T * B, I}), w_ih.view({D * GH, I}).t());
  }
  at::Tensor hg = buffer(x, {D, B, GH});
  at::Tensor h_cur = buffer(x, {D, B, P}), h_nxt = buffer(x, {D, B, P});
  h_cur.copy_(h0);
  if (Cell::kHasCellState) cn.copy_(c0);
  at::Tensor r_buf = s.proj ? buffer(x, {D, B, H}) : at::Tensor();
  at::Tensor proj_buf = s.proj ? buffer(x, {D, B, P}) : at::Tensor();
  // Views made once (at small sizes the time loop's host cost counts).
  const at::Tensor w_hh_t = w_hh.transpose(1, 2);                            // [D, P, G*H]
  const at::Tensor w_hr_t = s.proj ? w_hr->transpose(1, 2) : at::Tensor();  // [D, H, P]
  const at::Tensor b_hh_all = b_hh.has_value() ? *b_hh : at::Tensor();
  const int64_t* len = lengths_dev.defined() ? lengths_dev.data_ptr<int64_t>() : nullptr;
  const Steps steps[2] = {{T, false, len}, {T, true, len}};
  using Forward = typename Cell::template Forward<scalar_t>;
  for (int64_t k = 0; k < T; ++k) {
    at::bmm_out(hg, h_cur, w_hh_t);  // [D, B, P] @ [D, P, G*H], both directions
    PerDirection<Forward> cell{};
    PerDirection<ProjectionCommitFn<scalar_t>> commit{};
    for (int64_t d = 0; d < 2; ++d) {
      const int64_t dd = d < D ? d : 0;  // with one direction, dir[1] repeats dir[0] (and is not run)
      const int64_t t = steps[dd].time(k);
      ForwardStep<scalar_t> st{steps[dd],
                               t,
                               H,
                               P,
                               xp.data_ptr<scalar_t>() + t * B * D * GH + dd * GH,
                               D * GH,
                               hg.data_ptr<scalar_t>() + dd * B * GH,
                               at_offset<scalar_t>(b_hh_all, dd * GH),
                               h_cur.data_ptr<scalar_t>() + dd * B * P,
                               h_nxt.data_ptr<scalar_t>() + dd * B * P,
                               Cell::kHasCellState ? cn.data_ptr<scalar_t>() + dd * B * H : nullptr,
                               at_offset<scalar_t>(r_buf, dd * B * H),
                               y.data_ptr<scalar_t>() + t * B * D * P + dd * P,
                               D * P,
                               save && Cell::kSaved > 0 ? saved.data_ptr<scalar_t>() + (dd * T + t) * B * Cell::kSaved * H
                                                        : nullptr};
      cell.dir[d] = Forward{st};
      commit.dir[d] = ProjectionCommitFn<scalar_t>{steps[dd], t, P, at_offset<scalar_t>(proj_buf, dd * B * P),
                                                   st.h_prev, st.h_next, st.y, D * P};
    }
    cell.n = B * H;
    Launcher::run(D * B * H, cell);
    if (s.proj) {
      at::bmm_out(proj_buf, r_buf, w_hr_t);  // [D, B, H] @ [D, H, P]
      commit.n = B * P;
      Launcher::run(D * B * P, commit);
    }
    std::swap(h_cur, h_nxt);
  }
  hn.copy_(h_cur);
}

template <typename Launcher, typename Cell, typename scalar_t>
void backward(const LayerSizes& s, const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& grad_cn,
              const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& h0, const at::Tensor& c0,
              const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr, const at::Tensor& lengths_dev,
              const at::Tensor& y, const at::Tensor& saved, at::Tensor& grad_x, at::Tensor& grad_w_ih,
              at::Tensor& grad_b_ih, at::Tensor& grad_h0, at::Tensor& grad_c0, at::Tensor& grad_w_hh,
              at::Tensor& grad_b_hh, at::Tensor& grad_w_hr) {
  const int64_t T = s.T, B = s.B, H = s.H, P = s.P, D = s.D, GH = Cell::kGates * H, I = x.size(2);
  // The input projection's gate gradients in time order, both directions side by side (the
  // layout of the forward's xp): [T*B, D*G*H], so that W_ih's and x's gradients are one GEMM each.
  at::Tensor dgx = buffer(x, {T * B, D * GH});
  // The recurrent ones, which the step's GEMM reads for both directions as one strided batch
  // [D, B, G*H]: where they differ from dgx (GRU), all steps in processing order (index k: time k
  // forward, T-1-k reverse), for W_hh's gradient too; where they agree, with one direction dgx
  // itself (processing order is time order), with two a per-step buffer (W_hh's gradient then
  // reads dgx, and the previous states by time).
  const bool dgh_is_dgx = D == 1 && !Cell::kSeparateRecurrentGrad;
  const bool dgh_per_step = D == 2 && !Cell::kSeparateRecurrentGrad;
  at::Tensor dgh = dgh_is_dgx ? dgx.view({1, T, B, GH}) : buffer(x, {D, dgh_per_step ? 1 : T, B, GH});
  at::Tensor dh_cur = buffer(x, {D, B, P}), dh_nxt = buffer(x, {D, B, P});
  dh_cur.copy_(grad_hn);
  if (Cell::kHasCellState) grad_c0.copy_(grad_cn);  // the running dL/dc, in place
  at::Tensor h_prev_all = buffer(x, {D, T, B, P});                           // in dgh's order
  at::Tensor dh_all = s.proj ? buffer(x, {D, T, B, P}) : at::Tensor();       // processing order
  at::Tensor r_all = s.proj ? buffer(x, {D, T, B, H}) : at::Tensor();        // processing order
  at::Tensor dr = s.proj ? buffer(x, {D, B, H}) : at::Tensor();
  const int64_t* len = lengths_dev.defined() ? lengths_dev.data_ptr<int64_t>() : nullptr;
  const Steps steps[2] = {{T, false, len}, {T, true, len}};
  // Per-step views made once (per step they cost host time, which counts at small sizes).
  const std::vector<at::Tensor> dgh_steps = dgh.unbind(1);                                      // [D, B, G*H]
  const std::vector<at::Tensor> dh_all_steps = s.proj ? dh_all.unbind(1) : std::vector<at::Tensor>();  // [D, B, P]
  using Backward = typename Cell::template Backward<scalar_t>;
  for (int64_t k = T - 1; k >= 0; --k) {
    PerDirection<ProjectionGradFn<scalar_t>> proj_grad{};
    PerDirection<Backward> cell{};
    for (int64_t d = 0; d < 2; ++d) {
      const int64_t dd = d < D ? d : 0;  // with one direction, dir[1] repeats dir[0] (and is not run)
      const int64_t t = steps[dd].time(k);
      const scalar_t* gy_d = grad_y.data_ptr<scalar_t>() + dd * P;
      proj_grad.dir[d] = ProjectionGradFn<scalar_t>{steps[dd],
                                                    t,
                                                    B,
                                                    P,
                                                    dh_cur.data_ptr<scalar_t>() + dd * B * P,
                                                    gy_d,
                                                    D * P,
                                                    at_offset<scalar_t>(dh_all, (dd * T + k) * B * P),
                                                    dh_nxt.data_ptr<scalar_t>() + dd * B * P};
      BackwardStep<scalar_t> st{steps[dd],
                                t,
                                B,
                                H,
                                P,
                                Cell::kSaved > 0 ? saved.data_ptr<scalar_t>() + dd * T * B * Cell::kSaved * H : nullptr,
                                y.data_ptr<scalar_t>() + dd * P,
                                gy_d,
                                D * P,
                                h0.data_ptr<scalar_t>() + dd * B * P,
                                Cell::kHasCellState ? c0.data_ptr<scalar_t>() + dd * B * H : nullptr,
                                dh_cur.data_ptr<scalar_t>() + dd * B * P,
                                at_offset<scalar_t>(dr, dd * B * H),
                                dh_nxt.data_ptr<scalar_t>() + dd * B * P,
                                Cell::kHasCellState ? grad_c0.data_ptr<scalar_t>() + dd * B * H : nullptr,
                                dgx.data_ptr<scalar_t>() + t * B * D * GH + dd * GH,
                                D * GH,
                                dgh.data_ptr<scalar_t>() + (dd * dgh.size(1) + (dgh_per_step ? 0 : k)) * B * GH,
                                dgh_is_dgx,
                                at_offset<scalar_t>(r_all, (dd * T + k) * B * H)};
      cell.dir[d] = Backward{st};
    }
    if (s.proj) {
      proj_grad.n = B * P;
      Launcher::run(D * B * P, proj_grad);
      at::bmm_out(dr, dh_all_steps[k], *w_hr);  // [D, B, P] @ [D, P, H]
    }
    cell.n = B * H;
    Launcher::run(D * B * H, cell);
    dh_nxt.baddbmm_(dgh_steps[dgh_per_step ? 0 : k], w_hh);  // += dgates_k @ W_hh: [D, B, G*H] @ [D, G*H, P]
    std::swap(dh_cur, dh_nxt);
  }
  grad_h0.copy_(dh_cur);
  // What needs every step at once: the weight and bias gradients, x's gradient.
  PerDirection<PrevStatesFn<scalar_t>> prev{};
  for (int64_t d = 0; d < 2; ++d) {
    const int64_t dd = d < D ? d : 0;
    prev.dir[d] = PrevStatesFn<scalar_t>{steps[dd], B, P, y.data_ptr<scalar_t>() + dd * P, D * P,
                                         h0.data_ptr<scalar_t>() + dd * B * P,
                                         h_prev_all.data_ptr<scalar_t>() + dd * T * B * P, !dgh_per_step};
  }
  prev.n = T * B * P;
  Launcher::run(D * T * B * P, prev);
  const at::Tensor x2d = x.view({T * B, I});
  at::Tensor gw_ih = grad_w_ih.view({D * GH, I});
  at::mm_out(gw_ih, dgx.t(), x2d);
  // [D, T*B, G*H]: the recurrent gate gradients of all steps (with a per-step dgh: dgx's columns of each
  // direction, a strided view)
  const at::Tensor dgh3d = dgh_per_step ? dgx.view({T * B, D, GH}).transpose(0, 1) : dgh.view({D, T * B, GH});
  at::bmm_out(grad_w_hh, dgh3d.transpose(1, 2), h_prev_all.view({D, T * B, P}));
  if (grad_b_ih.defined()) {
    at::Tensor gb = grad_b_ih.view({D * GH});
    at::sum_out(gb, dgx, at::IntArrayRef{0});
  }
  if (grad_b_hh.defined()) at::sum_out(grad_b_hh, dgh3d, at::IntArrayRef{1});
  if (grad_x.defined()) {
    at::Tensor gx = grad_x.view({T * B, I});
    at::mm_out(gx, dgx, w_ih.view({D * GH, I}));  // both directions' contributions summed by the GEMM
  }
  if (s.proj) {
    at::bmm_out(grad_w_hr, dh_all.view({D, T * B, P}).transpose(1, 2), r_all.view({D, T * B, H}));
  }
}

// ---------------------------------------------------------------- op entry points
// The same contract as the CPU ops (cpu/recurrence.h layer_forward / layer_backward).

template <typename Launcher, typename Cell>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_forward(
    const char* op, const at::Tensor& x_in, const at::Tensor& w_ih_in, const c10::optional<at::Tensor>& b_ih_in,
    const at::Tensor& h0_in, const at::Tensor* c0_in, const at::Tensor& w_hh_in,
    const c10::optional<at::Tensor>& b_hh_in, const c10::optional<at::Tensor>& w_hr_in,
    const c10::optional<at::Tensor>& lengths, bool save) {
  const ProjectionShape x_proj_shape = check_input_args(op, Cell::kGates, x_in, w_ih_in, b_ih_in);
  const LayerSizes s =
      check_layer_args(op, Cell::kGates, x_proj_shape, h0_in, c0_in, w_hh_in, b_hh_in, w_hr_in, lengths);
  Launcher::check_call(op, s, x_in);
  const typename Launcher::Guard guard(x_in);
  active_rows_per_step(op, lengths, s.T, s.B);  // validates the lengths
  const auto contiguous = [](const c10::optional<at::Tensor>& t) {
    return t.has_value() ? c10::optional<at::Tensor>(t->contiguous()) : c10::nullopt;
  };
  const at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), h0 = h0_in.contiguous();
  const at::Tensor c0 = c0_in ? c0_in->contiguous() : at::Tensor();
  const at::Tensor w_hh = w_hh_in.contiguous();
  const at::Tensor lengths_dev = device_lengths<Launcher>(lengths, x);
  LayerOutputs out = new_layer_outputs(x, s, Cell::kHasCellState, Cell::kSaved, save);
  if (no_hidden_units(s)) {
    return out.tuple();
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastrnn_engine_forward", [&] {
    forward<Launcher, Cell, scalar_t>(s, x, w_ih, contiguous(b_ih_in), h0, c0, w_hh, contiguous(b_hh_in),
                                      contiguous(w_hr_in), lengths_dev, save, out.y, out.hn, out.cn, out.workspace);
  });
  return out.tuple();
}

template <typename Launcher, typename Cell>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
layer_backward(const char* op, const at::Tensor& grad_y_in, const at::Tensor& grad_hn_in, const at::Tensor* grad_cn_in,
               const at::Tensor& x_in, const at::Tensor& w_ih_in, const c10::optional<at::Tensor>& b_ih_in,
               const at::Tensor& h0_in, const at::Tensor* c0_in, const at::Tensor& w_hh_in,
               const c10::optional<at::Tensor>& b_hh_in, const c10::optional<at::Tensor>& w_hr_in,
               const c10::optional<at::Tensor>& lengths, const at::Tensor& y_in, const at::Tensor& saved_in,
               bool need_grad_x) {
  const ProjectionShape x_proj_shape = check_input_args(op, Cell::kGates, x_in, w_ih_in, b_ih_in);
  const LayerSizes s =
      check_layer_args(op, Cell::kGates, x_proj_shape, h0_in, c0_in, w_hh_in, b_hh_in, w_hr_in, lengths);
  Launcher::check_call(op, s, x_in);
  const typename Launcher::Guard guard(x_in);
  check_backward_args(op, s, Cell::kSaved, grad_y_in, grad_hn_in, grad_cn_in, x_in, y_in, saved_in);
  active_rows_per_step(op, lengths, s.T, s.B);
  const at::Tensor grad_y = grad_y_in.contiguous(), grad_hn = grad_hn_in.contiguous();
  const at::Tensor grad_cn = grad_cn_in ? grad_cn_in->contiguous() : at::Tensor();
  const at::Tensor x = x_in.contiguous(), w_ih = w_ih_in.contiguous(), h0 = h0_in.contiguous();
  const at::Tensor c0 = c0_in ? c0_in->contiguous() : at::Tensor();
  const at::Tensor w_hh = w_hh_in.contiguous();
  const c10::optional<at::Tensor> w_hr = w_hr_in ? c10::optional<at::Tensor>(w_hr_in->contiguous()) : c10::nullopt;
  const at::Tensor y = y_in.contiguous(), saved = saved_in.contiguous();
  const at::Tensor lengths_dev = device_lengths<Launcher>(lengths, x);
  LayerGrads g = new_layer_grads(x, s, b_ih_in.has_value(), b_hh_in.has_value(), Cell::kHasCellState, need_grad_x);
  if (no_hidden_units(s)) {
    return zero_input_grads(g).tuple(x.options());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fastrnn_engine_backward", [&] {
    backward<Launcher, Cell, scalar_t>(s, grad_y, grad_hn, grad_cn, x, w_ih, h0, c0, w_hh, w_hr, lengths_dev, y,
                                       saved, g.grad_x, g.grad_w_ih, g.grad_b_ih, g.grad_h0, g.grad_c0, g.grad_w_hh,
                                       g.grad_b_hh, g.grad_w_hr);
  });
  return g.tuple(x.options());
}

}  // namespace engine
}  // namespace fastrnn
