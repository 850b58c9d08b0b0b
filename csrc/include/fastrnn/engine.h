// The device-generic layer engine: one layer over the whole sequence (one or both directions),
// every GEMM an ATen op (cuBLAS on CUDA), every per-step pointwise pass a functor over the
// elements of one step, run by a Launcher policy:
//
//   struct Launcher {
//     // The device it runs on; on CUDA also the path chosen for the call (fastrnn/cuda_path.h).
//     static void check_call(const char* op, const LayerSizes& s, const at::Tensor& x);
//     using Guard = ...;  // constructed from x for the whole op (CUDA: the device guard, and
//                         // float32 GEMMs in the precision of torch.nn's cuDNN RNNs)
//     // A host tensor (the lengths, the compact rows' index) where the functors can read it.
//     static at::Tensor host_to_device(const at::Tensor& host, const at::Tensor& x);
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
// (PerDirection). Nothing is allocated inside the time loops, and nothing waits for the device.
//
// Variable lengths are paid by their real rows (RealRows): step k multiplies and updates only
// the first n_k rows, the most that any direction's time at k has running (with lengths sorted
// decreasingly, as PackedSequence gives them, exactly the rows still running), and the products
// over all steps (the input projection; backward's weight gradients and x's) take only the rows
// that some step uses, gathered in time order ("compact" rows [N, D, ...], N = sum of the steps'
// rows). The state (h, c; backward's dL/dh) is one buffer updated in place: each functor element
// reads and then writes only its own (row, unit), after the step's GEMM has read the old state,
// so rows a step leaves out keep their last value, which is their final state.
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
    if (s.r_out) s.r_out[b * s.r_stride + j] = static_cast<scalar_t>(og * cells::tanh_(c));
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

// ---------------------------------------------------------------- the layer

// An internal buffer; NaN-filled under FASTRNN_DEBUG=1 like the outputs.
inline at::Tensor buffer(const at::Tensor& like, at::IntArrayRef sizes) { return new_output(like, sizes); }

// lengths as the functors read them (on CUDA: copied to x's device once per call, before the loop).
template <typename Launcher>
at::Tensor device_lengths(const c10::optional<at::Tensor>& lengths, const at::Tensor& x) {
  return lengths.has_value() ? Launcher::host_to_device(lengths->contiguous(), x) : at::Tensor();
}

// Which rows of the padded [T, B] layout the call computes (see the top of this file). Step t's rows are
// its first rows[t] (active_rows_per_step: the last running row's index + 1); compact row offset[t] + b
// is (t, b). Without lengths, or with every row running at every step, that is every row and compact
// rows are the padded ones (offset[t] = t * B, no gather).
struct RealRows {
  std::vector<int64_t> rows, offset;
  int64_t total = 0;       // N
  at::Tensor index;        // [N] t * B + b of each compact row, on x's device; undefined when every row counts
  const int64_t* index_ptr() const { return index.defined() ? index.data_ptr<int64_t>() : nullptr; }
  bool compact() const { return index.defined(); }
  // Rows that processing step k multiplies: the most that any of the D directions has at its time.
  int64_t at_step(const Steps* steps, int64_t D, int64_t k) const {
    int64_t n = 0;
    for (int64_t d = 0; d < D; ++d) n = std::max(n, rows[steps[d].time(k)]);
    return n;
  }
};

template <typename Launcher>
RealRows real_rows(const char* op, const c10::optional<at::Tensor>& lengths, int64_t T, int64_t B,
                   const at::Tensor& x) {
  RealRows r;
  r.rows = active_rows_per_step(op, lengths, T, B);  // also validates the lengths
  r.offset.resize(T);
  for (int64_t t = 0; t < T; ++t) {
    r.offset[t] = r.total;
    r.total += r.rows[t];
  }
  if (r.total == T * B) {
    for (int64_t t = 0; t < T; ++t) r.offset[t] = t * B;
    return r;
  }
  at::Tensor index = at::empty({r.total}, at::TensorOptions().dtype(at::kLong));
  int64_t* p = index.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t b = 0; b < r.rows[t]; ++b) *p++ = t * B + b;
  }
  r.index = Launcher::host_to_device(index, x);
  return r;
}

// x's rows that the call computes, [N, I].
inline at::Tensor compact_rows(const at::Tensor& x2d, const RealRows& rows) {
  return rows.compact() ? x2d.index_select(0, rows.index) : x2d;
}

// The first n rows of a [D, B, ...] buffer (every row: the buffer itself, no view to make).
inline at::Tensor first_rows(const at::Tensor& t, int64_t n) { return n == t.size(1) ? t : t.narrow(1, 0, n); }

// A pointer's offset for direction d, as a per-direction functor's base.
template <typename scalar_t>
scalar_t* at_offset(const at::Tensor& t, int64_t offset) {
  return t.defined() ? t.data_ptr<scalar_t>() + offset : nullptr;
}

template <typename Launcher, typename Cell, typename scalar_t>
void forward(const LayerSizes& s, const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
             const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
             const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr,
             const at::Tensor& lengths_dev, const RealRows& rows, bool save, at::Tensor& y, at::Tensor& hn,
             at::Tensor& cn, at::Tensor& saved) {
  const int64_t T = s.T, B = s.B, H = s.H, P = s.P, D = s.D, GH = Cell::kGates * H, I = x.size(2);
  // Both directions' input projections in one GEMM over the compact rows: xp [N, D*G*H], direction d in
  // columns d*G*H...
  at::Tensor xp = buffer(x, {rows.total, D * GH});
  const at::Tensor x_rows = compact_rows(x.view({T * B, I}), rows);
  if (b_ih.has_value()) {
    at::addmm_out(xp, b_ih->view({D * GH}), x_rows, w_ih.view({D * GH, I}).t());
  } else {
    at::mm_out(xp, x_rows, w_ih.view({D * GH, I}).t());
  }
  if (rows.compact()) y.zero_();  // the rows no step computes are past their sequence's end
  at::Tensor hg = buffer(x, {D, B, GH});
  at::Tensor h = buffer(x, {D, B, P});  // the state, updated in place
  h.copy_(h0);
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
    const int64_t n = rows.at_step(steps, D, k);
    if (n == 0) continue;  // no sequence is running at this step in any direction
    at::Tensor hg_n = first_rows(hg, n);
    at::bmm_out(hg_n, first_rows(h, n), w_hh_t);  // [D, n, P] @ [D, P, G*H], both directions
    PerDirection<Forward> cell{};
    PerDirection<ProjectionCommitFn<scalar_t>> commit{};
    for (int64_t d = 0; d < 2; ++d) {
      const int64_t dd = d < D ? d : 0;  // with one direction, dir[1] repeats dir[0] (and is not run)
      const int64_t t = steps[dd].time(k);
      scalar_t* h_d = h.data_ptr<scalar_t>() + dd * B * P;
      ForwardStep<scalar_t> st{steps[dd],
                               t,
                               H,
                               P,
                               xp.data_ptr<scalar_t>() + rows.offset[t] * D * GH + dd * GH,
                               D * GH,
                               hg.data_ptr<scalar_t>() + dd * B * GH,
                               at_offset<scalar_t>(b_hh_all, dd * GH),
                               h_d,
                               h_d,
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
    cell.n = n * H;
    Launcher::run(D * n * H, cell);
    if (s.proj) {
      at::Tensor proj_n = first_rows(proj_buf, n);
      at::bmm_out(proj_n, first_rows(r_buf, n), w_hr_t);  // [D, n, H] @ [D, H, P]
      commit.n = n * P;
      Launcher::run(D * n * P, commit);
    }
  }
  hn.copy_(h);
}

template <typename Launcher, typename Cell, typename scalar_t>
void backward(const LayerSizes& s, const at::Tensor& grad_y, const at::Tensor& grad_hn, const at::Tensor& grad_cn,
              const at::Tensor& x, const at::Tensor& w_ih, const at::Tensor& h0, const at::Tensor& c0,
              const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr, const at::Tensor& lengths_dev,
              const RealRows& rows, const at::Tensor& y, const at::Tensor& saved, at::Tensor& grad_x,
              at::Tensor& grad_w_ih, at::Tensor& grad_b_ih, at::Tensor& grad_h0, at::Tensor& grad_c0,
              at::Tensor& grad_w_hh, at::Tensor& grad_b_hh, at::Tensor& grad_w_hr) {
  const int64_t T = s.T, B = s.B, H = s.H, P = s.P, D = s.D, GH = Cell::kGates * H, I = x.size(2);
  const int64_t N = rows.total;
  // Over the compact rows in time order, both directions side by side (the layout of the forward's xp):
  // the input projection's gate gradients [N, D*G*H] (W_ih's and x's gradients are one GEMM each), and
  // GRU's recurrent ones, which differ in the n gate (the other cells' W_hh gradient reads dgx).
  at::Tensor dgx = buffer(x, {N, D * GH});
  at::Tensor dgh_all = Cell::kSeparateRecurrentGrad ? buffer(x, {N, D * GH}) : at::Tensor();
  at::Tensor dgh_step = buffer(x, {D, B, GH});  // the recurrent gate gradients of the step at hand
  at::Tensor dh = buffer(x, {D, B, P});         // dL/dh, updated in place
  dh.copy_(grad_hn);
  if (Cell::kHasCellState) grad_c0.copy_(grad_cn);  // the running dL/dc, in place
  at::Tensor h_prev_all = buffer(x, {N, D, P});
  at::Tensor dh_step = s.proj ? buffer(x, {D, B, P}) : at::Tensor();
  at::Tensor dh_all = s.proj ? buffer(x, {N, D, P}) : at::Tensor();
  at::Tensor r_all = s.proj ? buffer(x, {N, D, H}) : at::Tensor();
  at::Tensor dr = s.proj ? buffer(x, {D, B, H}) : at::Tensor();
  const int64_t* len = lengths_dev.defined() ? lengths_dev.data_ptr<int64_t>() : nullptr;
  const Steps steps[2] = {{T, false, len}, {T, true, len}};
  using Backward = typename Cell::template Backward<scalar_t>;
  for (int64_t k = T - 1; k >= 0; --k) {
    const int64_t n = rows.at_step(steps, D, k);
    if (n == 0) continue;
    PerDirection<ProjectionGradFn<scalar_t>> proj_grad{};
    PerDirection<Backward> cell{};
    for (int64_t d = 0; d < 2; ++d) {
      const int64_t dd = d < D ? d : 0;  // with one direction, dir[1] repeats dir[0] (and is not run)
      const int64_t t = steps[dd].time(k);
      const int64_t compact_row = rows.offset[t] * D;  // (t, 0)'s compact row, in units of one direction's width
      const scalar_t* gy_d = grad_y.data_ptr<scalar_t>() + dd * P;
      scalar_t* dh_d = dh.data_ptr<scalar_t>() + dd * B * P;
      proj_grad.dir[d] = ProjectionGradFn<scalar_t>{steps[dd],
                                                    t,
                                                    B,
                                                    P,
                                                    dh_d,
                                                    gy_d,
                                                    D * P,
                                                    at_offset<scalar_t>(dh_step, dd * B * P),
                                                    at_offset<scalar_t>(dh_all, (compact_row + dd) * P),
                                                    D * P,
                                                    rows.rows[t],
                                                    dh_d};
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
                                dh_d,
                                at_offset<scalar_t>(dr, dd * B * H),
                                dh_d,
                                Cell::kHasCellState ? grad_c0.data_ptr<scalar_t>() + dd * B * H : nullptr,
                                dgx.data_ptr<scalar_t>() + (compact_row + dd) * GH,
                                D * GH,
                                rows.rows[t],
                                dgh_step.data_ptr<scalar_t>() + dd * B * GH,
                                at_offset<scalar_t>(dgh_all, (compact_row + dd) * GH),
                                at_offset<scalar_t>(r_all, (compact_row + dd) * H),
                                D * H};
      cell.dir[d] = Backward{st};
    }
    if (s.proj) {
      proj_grad.n = n * P;
      Launcher::run(D * n * P, proj_grad);
      at::Tensor dr_n = first_rows(dr, n);
      at::bmm_out(dr_n, first_rows(dh_step, n), *w_hr);  // [D, n, P] @ [D, P, H]
    }
    cell.n = n * H;
    Launcher::run(D * n * H, cell);
    first_rows(dh, n).baddbmm_(first_rows(dgh_step, n), w_hh);  // += dgates_k @ W_hh: [D, n, G*H] @ [D, G*H, P]
  }
  grad_h0.copy_(dh);
  // What needs every step at once: the weight and bias gradients, x's gradient.
  PerDirection<PrevStatesFn<scalar_t>> prev{};
  for (int64_t d = 0; d < 2; ++d) {
    const int64_t dd = d < D ? d : 0;
    prev.dir[d] = PrevStatesFn<scalar_t>{steps[dd], B, P, rows.index_ptr(), y.data_ptr<scalar_t>() + dd * P, D * P,
                                         h0.data_ptr<scalar_t>() + dd * B * P,
                                         h_prev_all.data_ptr<scalar_t>() + dd * P, D * P};
  }
  prev.n = N * P;
  Launcher::run(D * N * P, prev);
  at::Tensor gw_ih = grad_w_ih.view({D * GH, I});
  at::mm_out(gw_ih, dgx.t(), compact_rows(x.view({T * B, I}), rows));
  // [D, N, G*H]: the recurrent gate gradients of all compact rows, per direction (a strided view)
  const at::Tensor dgh3d = (Cell::kSeparateRecurrentGrad ? dgh_all : dgx).view({N, D, GH}).transpose(0, 1);
  at::bmm_out(grad_w_hh, dgh3d.transpose(1, 2), h_prev_all.transpose(0, 1));
  if (grad_b_ih.defined()) {
    at::Tensor gb = grad_b_ih.view({D * GH});
    at::sum_out(gb, dgx, at::IntArrayRef{0});
  }
  if (grad_b_hh.defined()) at::sum_out(grad_b_hh, dgh3d, at::IntArrayRef{1});
  if (grad_x.defined()) {
    at::Tensor gx = grad_x.view({T * B, I});
    if (rows.compact()) {
      // Rows no step computes get no gradient; both directions' contributions are summed by the GEMM.
      gx.zero_();
      gx.index_copy_(0, rows.index, at::mm(dgx, w_ih.view({D * GH, I})));
    } else {
      at::mm_out(gx, dgx, w_ih.view({D * GH, I}));
    }
  }
  if (s.proj) {
    at::bmm_out(grad_w_hr, dh_all.transpose(0, 1).transpose(1, 2), r_all.transpose(0, 1));
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
  const RealRows rows = real_rows<Launcher>(op, lengths, s.T, s.B, x_in);  // validates the lengths
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
                                      contiguous(w_hr_in), lengths_dev, rows, save, out.y, out.hn, out.cn, out.workspace);
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
  const RealRows rows = real_rows<Launcher>(op, lengths, s.T, s.B, x_in);
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
    backward<Launcher, Cell, scalar_t>(s, grad_y, grad_hn, grad_cn, x, w_ih, h0, c0, w_hh, w_hr, lengths_dev, rows,
                                       y, saved, g.grad_x, g.grad_w_ih, g.grad_b_ih, g.grad_h0, g.grad_c0, g.grad_w_hh,
                                       g.grad_b_hh, g.grad_w_hr);
  });
  return g.tuple(x.options());
}

}  // namespace engine
}  // namespace fastrnn
