// The per-step pieces of the device-generic engine (fastrnn/engine.h), shared by its two time
// loops on CUDA (fastrnn/cuda_path.h chooses): the stepwise one (engine.h: per step a GEMM, then
// one pointwise launch of these functors) and the persistent one (fastrnn/persistent.h: one
// cooperative launch whose blocks call the same functors for the hidden units they own). Each
// functor handles one element (row b, unit j) of one direction at one step: the gate math
// (fastrnn/cells.h), the state update, the outputs and what backward saves. Shapes and the
// variable-lengths rules: the top of engine.h.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>

#include "fastrnn/cells.h"

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
  scalar_t* h_next;        // [B, P] (h_prev's buffer: element (b, j) is read, then written); unused with a
                           // projection (ProjectionCommit writes it)
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
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const { element(i / s.H, i % s.H); }
  // Row b, unit j (the persistent kernel's blocks call this for the units they own).
  FASTRNN_HOST_DEVICE void element(int64_t b, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H, GH = 4 * H;
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
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const { element(i / s.H, i % s.H); }
  // Row b, unit j (the persistent kernel's blocks call this for the units they own).
  FASTRNN_HOST_DEVICE void element(int64_t b, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H, GH = 3 * H;
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
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const { element(i / s.H, i % s.H); }
  // Row b, unit j (the persistent kernel's blocks call this for the units they own).
  FASTRNN_HOST_DEVICE void element(int64_t b, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H;
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
  scalar_t* dh_next;         // [B, P] (dh_cur's buffer: element (b, j) is read, then written); with a
                             // projection ProjectionGradFn fills it
  scalar_t* dc;              // [B, H] (LSTM), updated in place
  // Gate gradients of step t. Of the input projection (compact rows: row b at dgx + b * compact_stride), and of
  // the recurrent one: for this step's GEMM (dgh_step, [B, G*H]) and, where they differ from dgx (GRU), for
  // W_hh's gradient (dgh_all, compact rows like dgx; else nullptr).
  scalar_t* dgx;
  int64_t compact_stride;    // D*G*H
  int64_t compact_rows;      // step t's compact rows: rows[t] (the other direction's step may run more rows)
  scalar_t* dgh_step;
  scalar_t* dgh_all;
  scalar_t* r_out;           // compact rows of D*H: r recomputed for W_hr's gradient, or nullptr
  int64_t r_stride;          // D*H

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
  // (Of a running row, which always has its compact row.)
  FASTRNN_HOST_DEVICE void write_gate(int64_t b, int64_t G, int64_t q, int64_t j, at::opmath_type<scalar_t> d_in,
                                      at::opmath_type<scalar_t> d_rec) const {
    dgx[b * compact_stride + q * H + j] = static_cast<scalar_t>(d_in);
    dgh_step[b * G * H + q * H + j] = static_cast<scalar_t>(d_rec);
    if (dgh_all) dgh_all[b * compact_stride + q * H + j] = static_cast<scalar_t>(d_rec);
  }
  // Past the sequence's end: no gate gradients, and dL/dh passes through untouched. A row past step t's
  // compact rows has none to write (its compact row would be another step's).
  FASTRNN_HOST_DEVICE void inactive(int64_t b, int64_t j, int64_t G) const {
    const bool has_compact_row = b < compact_rows;
    for (int64_t q = 0; q < G; ++q) {
      dgh_step[b * G * H + q * H + j] = scalar_t(0);
      if (!has_compact_row) continue;
      dgx[b * compact_stride + q * H + j] = scalar_t(0);
      if (dgh_all) dgh_all[b * compact_stride + q * H + j] = scalar_t(0);
    }
    if (!dr) dh_next[b * P + j] = dh_cur[b * P + j];
    if (r_out && has_compact_row) r_out[b * r_stride + j] = scalar_t(0);
  }
};

template <typename scalar_t>
struct LstmBackwardFn {
  BackwardStep<scalar_t> s;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const { element(i / s.H, i % s.H); }
  // Row b, unit j (the persistent kernel's blocks call this for the units they own).
  FASTRNN_HOST_DEVICE void element(int64_t b, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H;
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
    if (s.r_out) s.r_out[b * s.r_stride + j] = static_cast<scalar_t>(og * cells::tanh_(c));
  }
};

template <typename scalar_t>
struct GruBackwardFn {
  BackwardStep<scalar_t> s;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const { element(i / s.H, i % s.H); }
  // Row b, unit j (the persistent kernel's blocks call this for the units they own).
  FASTRNN_HOST_DEVICE void element(int64_t b, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H;
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
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const { element(i / s.H, i % s.H); }
  // Row b, unit j (the persistent kernel's blocks call this for the units they own).
  FASTRNN_HOST_DEVICE void element(int64_t b, int64_t j) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t H = s.H;
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

// With a projection, before the cell's functor: dL/dh_t in P-space (zero past the end), for this
// step's GEMM (dh_t) and for W_hr's gradient (dh_all, compact rows), and dh_next's start (dL/dh
// passes through past the end; else W_hh brings all of it).
template <typename scalar_t>
struct ProjectionGradFn {
  Steps steps;
  int64_t t, B, P;
  const scalar_t* dh_cur;  // [B, P]
  const scalar_t* gy;      // this direction's columns of grad_y
  int64_t y_stride;
  scalar_t* dh_t;          // [B, P]
  scalar_t* dh_all;        // compact rows of D*P
  int64_t dh_all_stride;   // D*P
  int64_t compact_rows;    // step t's (rows past them have no compact row)
  scalar_t* dh_next;       // [B, P] (dh_cur's buffer)
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t b = i / P, p = i % P;
    const bool active = steps.active(t, b);
    const scalar_t d = active ? static_cast<scalar_t>(static_cast<acc_t>(dh_cur[i]) +
                                                      static_cast<acc_t>(gy[(t * B + b) * y_stride + p]))
                              : scalar_t(0);
    dh_t[i] = d;
    if (b < compact_rows) dh_all[b * dh_all_stride + p] = d;
    dh_next[i] = active ? scalar_t(0) : dh_cur[i];
  }
};

// Compact row r (step t, row b) of out = the state sequence b entered step t with (h0 at its
// first step), zero past its end: the right operand of W_hh's gradient, in the rows of the gate
// gradients it multiplies.
template <typename scalar_t>
struct PrevStatesFn {
  Steps steps;
  int64_t B, P;
  const int64_t* row_index;  // compact row r is t * B + b = row_index[r]; nullptr: r itself (every row)
  const scalar_t* y;         // this direction's columns
  int64_t y_stride;
  const scalar_t* h0;        // [B, P]
  scalar_t* out;             // compact rows of out_stride (D*P)
  int64_t out_stride;
  FASTRNN_HOST_DEVICE void operator()(int64_t i) const {
    const int64_t r = i / P, p = i % P, tb = row_index ? row_index[r] : r, t = tb / B, b = tb % B;
    out[r * out_stride + p] = !steps.active(t, b)  ? scalar_t(0)
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

}  // namespace engine
}  // namespace fastrnn
