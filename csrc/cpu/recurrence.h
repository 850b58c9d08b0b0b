// The CPU recurrence engine shared by every cell (LSTM, GRU, RNN-tanh, RNN-relu).
//
// One call runs one layer over the whole sequence for D = 1 or 2 directions. The input
// projection (W_ih x + b_ih for all T) is one GEMM done by the caller; here, per step:
// one recurrent GEMM into a preallocated gates buffer, then one fused pointwise pass over
// the batch (bias, activations, state update, saving what backward needs). Backward runs
// the fused pointwise backward and one GEMM per step, and the weight gradients as single
// GEMMs over all steps after the loop. Nothing is allocated inside the time loop.
//
// A Cell policy supplies the gate math for one batch row (see lstm.cpp, gru.cpp, rnn.cpp):
//   kGates, kSaved (workspace values per hidden unit), kHasCellState, kHasDirectPath,
//   forward_row(FwdRow), backward_row(BwdRow).
//
// Variable lengths: sequence b is active at step t iff t < lengths[b]. It stops updating
// its state after its length, its outputs there are zero, and the reverse direction starts
// it at its own last element t = lengths[b] - 1 from h0/c0. With lengths sorted
// decreasingly (PackedSequence order) only the first active_rows[t] rows enter the GEMMs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "fastrnn/cells.h"
#include "fastrnn/checks.h"

namespace fastrnn {
namespace cpu {

// Pointers into one batch row for the forward pointwise pass. All are [H]-strided by gate.
template <typename scalar_t>
struct FwdRow {
  const scalar_t* x;       // [G*H] input projection W_ih x + b_ih
  const scalar_t* hg;      // [G*H] recurrent projection W_hh h_prev (no bias)
  const scalar_t* bias;    // [G*H] b_hh, or nullptr
  const scalar_t* h_prev;  // [H] previous hidden state (may alias h_out)
  scalar_t* c;             // [H] LSTM cell state, read and updated in place
  scalar_t* h_out;         // [H] new hidden state (LSTM with projection: o * tanh(c))
  scalar_t* y_out;         // [H] second copy of the new hidden state, or nullptr
  scalar_t* saved;         // [kSaved*H] workspace row, or nullptr in inference
};

// Pointers into one batch row for the backward pointwise pass.
template <typename scalar_t>
struct BwdRow {
  const scalar_t* saved;   // [kSaved*H] workspace row written by forward
  const scalar_t* h;       // [H] this step's output (RNN)
  const scalar_t* h_prev;  // [H] previous hidden state (GRU)
  const scalar_t* c_prev;  // [H] previous cell state (LSTM)
  const scalar_t* dh_a;    // dh = dh_a + dh_b: gradient w.r.t. this step's h (pre-projection)
  const scalar_t* dh_b;    // may be nullptr
  scalar_t* dc;            // [H] LSTM: gradient w.r.t. c, in from step t+1, out to step t-1
  scalar_t* dgx;           // [G*H] gradient w.r.t. the input projection's gates
  scalar_t* dgh;           // [G*H] gradient w.r.t. the recurrent projection's gates
  scalar_t* dh_direct;     // [H] kHasDirectPath: gradient to h_prev not through W_hh
  scalar_t* r_out;         // [H] LSTM with projection: o * tanh(c), for the W_hr gradient
};

inline bool debug_poison() {
  const char* v = std::getenv("FASTRNN_DEBUG");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

// Allocates an output; with FASTRNN_DEBUG=1 it is filled with NaN so that any element a
// kernel fails to write shows up in the tests.
inline at::Tensor new_output(const at::Tensor& like, at::IntArrayRef sizes) {
  at::Tensor t = at::empty(sizes, like.options());
  if (debug_poison()) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  }
  return t;
}

// Per step, how many leading batch rows can be active: 1 + the last b with lengths[b] > t.
// Also validates the lengths, so that no later index runs out of bounds.
inline std::vector<int64_t> active_rows_per_step(const char* op, const c10::optional<at::Tensor>& lengths,
                                                 int64_t T, int64_t B) {
  std::vector<int64_t> rows(T, B);
  if (!lengths.has_value()) {
    return rows;
  }
  std::fill(rows.begin(), rows.end(), 0);
  at::Tensor len = lengths->contiguous();
  const int64_t* l = len.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    TORCH_CHECK(l[b] >= 0 && l[b] <= T, op, ": lengths[", b, "] must be in [0, ", T, "] but got ", l[b]);
    for (int64_t t = 0; t < l[b]; ++t) {
      rows[t] = b + 1;
    }
  }
  return rows;
}

// Rows per task for at::parallel_for: enough work per task to pay for the thread hand-off.
inline int64_t row_grain(int64_t work_per_row) {
  constexpr int64_t kMinWorkPerTask = 16384;
  return std::max<int64_t>(1, kMinWorkPerTask / std::max<int64_t>(1, work_per_row));
}

struct StepIndex {
  int64_t T;
  bool reverse;
  const int64_t* lengths;  // nullptr: every sequence has length T
  int64_t length(int64_t b) const { return lengths ? lengths[b] : T; }
  bool active(int64_t t, int64_t b) const { return t < length(b); }
  // First step of sequence b in processing order: its state comes from h0/c0.
  bool first(int64_t t, int64_t b) const { return reverse ? t == length(b) - 1 : t == 0; }
  // The time index processed just before t (only meaningful when !first(t, b)).
  int64_t prev(int64_t t) const { return reverse ? t + 1 : t - 1; }
};

template <typename Cell, typename scalar_t>
struct Engine {
  using opmath_t = at::opmath_type<scalar_t>;

  // Outputs of forward: y [T, B, D*P], hn [D, B, P], cn [D, B, H] (LSTM), saved [D, T, B, kSaved*H].
  static void forward(const LayerSizes& s, const at::Tensor& x_proj, const at::Tensor& h0, const at::Tensor& c0,
                      const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
                      const c10::optional<at::Tensor>& w_hr, const at::Tensor& lengths_c,
                      const std::vector<int64_t>& active_rows, bool save, at::Tensor& y, at::Tensor& hn,
                      at::Tensor& cn, at::Tensor& saved) {
    const int64_t T = s.T, B = s.B, H = s.H, P = s.P, D = s.D, GH = s.G * s.H;
    const int64_t W = Cell::kSaved * H;
    at::Tensor gates = at::empty({B, GH}, x_proj.options());
    at::Tensor r_buf, proj_buf;
    if (s.proj) {
      r_buf = at::empty({B, H}, x_proj.options());
      proj_buf = at::empty({B, P}, x_proj.options());
    }
    scalar_t* y_ptr = y.data_ptr<scalar_t>();
    for (int64_t d = 0; d < D; ++d) {
      const StepIndex idx{T, d == 1, lengths_c.defined() ? lengths_c.data_ptr<int64_t>() : nullptr};
      at::Tensor h_state = hn[d];  // hn doubles as the running state: it ends as h_T
      h_state.copy_(h0[d]);
      at::Tensor c_state;
      if (Cell::kHasCellState) {
        c_state = cn[d];
        c_state.copy_(c0[d]);
      }
      const at::Tensor w_hh_t = w_hh[d].t();
      const scalar_t* xp = x_proj[d].data_ptr<scalar_t>();
      const scalar_t* bias = b_hh.has_value() ? (*b_hh)[d].data_ptr<scalar_t>() : nullptr;
      scalar_t* hs = h_state.data_ptr<scalar_t>();
      scalar_t* cs = Cell::kHasCellState ? c_state.data_ptr<scalar_t>() : nullptr;
      scalar_t* sv = (save && W > 0) ? saved[d].data_ptr<scalar_t>() : nullptr;
      const scalar_t* g = gates.data_ptr<scalar_t>();
      scalar_t* rb = s.proj ? r_buf.data_ptr<scalar_t>() : nullptr;

      for (int64_t k = 0; k < T; ++k) {
        const int64_t t = idx.reverse ? T - 1 - k : k;
        const int64_t n = active_rows[t];
        if (n > 0) {
          at::Tensor gates_n = gates.narrow(0, 0, n);
          at::mm_out(gates_n, h_state.narrow(0, 0, n), w_hh_t);
        }
        at::parallel_for(0, B, row_grain(GH), [&](int64_t begin, int64_t end) {
          for (int64_t b = begin; b < end; ++b) {
            scalar_t* y_row = y_ptr + (t * B + b) * D * P + d * P;
            scalar_t* sv_row = sv ? sv + (t * B + b) * W : nullptr;
            if (b >= n || !idx.active(t, b)) {
              std::fill(y_row, y_row + P, scalar_t(0));
              if (sv_row) std::fill(sv_row, sv_row + W, scalar_t(0));
              continue;
            }
            FwdRow<scalar_t> row;
            row.x = xp + (t * B + b) * GH;
            row.hg = g + b * GH;
            row.bias = bias;
            row.h_prev = hs + b * P;
            row.c = cs ? cs + b * H : nullptr;
            row.h_out = s.proj ? rb + b * H : hs + b * P;
            row.y_out = s.proj ? nullptr : y_row;
            row.saved = sv_row;
            Cell::forward_row(row, H);
          }
        });
        if (s.proj && n > 0) {
          // h = W_hr r for the active rows; inactive rows keep their state.
          at::Tensor proj_n = proj_buf.narrow(0, 0, n);
          at::mm_out(proj_n, r_buf.narrow(0, 0, n), w_hr->select(0, d).t());
          const scalar_t* pb = proj_buf.data_ptr<scalar_t>();
          for (int64_t b = 0; b < n; ++b) {
            if (!idx.active(t, b)) continue;
            std::copy(pb + b * P, pb + (b + 1) * P, hs + b * P);
            std::copy(pb + b * P, pb + (b + 1) * P, y_ptr + (t * B + b) * D * P + d * P);
          }
        }
      }
    }
  }

  // prev[t, b] = the state sequence b entered step t with: init[b] at its first step,
  // seq[prev(t), b] otherwise, zero where b is inactive. seq is [T, B, X] with row stride
  // seq_row_stride (y holds both directions side by side); init is [B, X] contiguous.
  static at::Tensor states_entering_each_step(const StepIndex& idx, int64_t B, int64_t X, const scalar_t* seq,
                                              int64_t seq_row_stride, const scalar_t* init,
                                              const at::TensorOptions& options) {
    at::Tensor prev = at::empty({idx.T, B, X}, options);
    scalar_t* out = prev.data_ptr<scalar_t>();
    at::parallel_for(0, idx.T * B, row_grain(X), [&](int64_t begin, int64_t end) {
      for (int64_t tb = begin; tb < end; ++tb) {
        const int64_t t = tb / B, b = tb % B;
        scalar_t* dst = out + tb * X;
        if (!idx.active(t, b)) {
          std::fill(dst, dst + X, scalar_t(0));
        } else {
          const scalar_t* src = idx.first(t, b) ? init + b * X : seq + (idx.prev(t) * B + b) * seq_row_stride;
          std::copy(src, src + X, dst);
        }
      }
    });
    return prev;
  }

  static void backward(const LayerSizes& s, const at::Tensor& grad_y, const at::Tensor& grad_hn,
                       const at::Tensor& grad_cn, const at::Tensor& h0, const at::Tensor& c0,
                       const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_hr, const at::Tensor& lengths_c,
                       const std::vector<int64_t>& active_rows, const at::Tensor& y, const at::Tensor& saved,
                       at::Tensor& grad_x_proj, at::Tensor& grad_h0, at::Tensor& grad_c0, at::Tensor& grad_w_hh,
                       at::Tensor& grad_b_hh, at::Tensor& grad_w_hr) {
    const int64_t T = s.T, B = s.B, H = s.H, P = s.P, D = s.D, GH = s.G * s.H;
    const int64_t W = Cell::kSaved * H;
    const auto opts = grad_y.options();
    // GRU's recurrent gate gradients differ from the input ones in the n gate; the others alias.
    at::Tensor dgh_buf = Cell::kSeparateRecurrentGrad ? at::empty({T, B, GH}, opts) : at::Tensor();
    at::Tensor dh_next = at::empty({B, P}, opts);
    at::Tensor dh_all, r_all, dr_buf;
    if (s.proj) {
      dh_all = at::empty({T, B, P}, opts);
      r_all = at::empty({T, B, H}, opts);
      dr_buf = at::empty({B, H}, opts);
    }
    const scalar_t* gy = grad_y.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    for (int64_t d = 0; d < D; ++d) {
      const StepIndex idx{T, d == 1, lengths_c.defined() ? lengths_c.data_ptr<int64_t>() : nullptr};
      at::Tensor dh_state = grad_h0[d];  // grad_h0 doubles as the running dL/dh
      dh_state.copy_(grad_hn[d]);
      at::Tensor dc_state;
      if (Cell::kHasCellState) {
        dc_state = grad_c0[d];
        dc_state.copy_(grad_cn[d]);
      }
      at::Tensor dgx = grad_x_proj[d];
      at::Tensor dgh = Cell::kSeparateRecurrentGrad ? dgh_buf : dgx;
      const at::Tensor w_hh_d = w_hh[d];
      const scalar_t* sv = W > 0 ? saved[d].data_ptr<scalar_t>() : nullptr;
      const at::Tensor h0_d = h0[d].contiguous();
      const scalar_t* h0p = h0_d.data_ptr<scalar_t>();
      const at::Tensor c0_d = Cell::kHasCellState ? c0[d].contiguous() : at::Tensor();
      const scalar_t* c0p = Cell::kHasCellState ? c0_d.data_ptr<scalar_t>() : nullptr;
      scalar_t* dgx_p = dgx.data_ptr<scalar_t>();
      scalar_t* dgh_p = dgh.data_ptr<scalar_t>();
      scalar_t* dcs = Cell::kHasCellState ? dc_state.data_ptr<scalar_t>() : nullptr;
      scalar_t* dha_all = s.proj ? dh_all.data_ptr<scalar_t>() : nullptr;
      scalar_t* r_all_p = s.proj ? r_all.data_ptr<scalar_t>() : nullptr;
      const scalar_t* drb = s.proj ? dr_buf.data_ptr<scalar_t>() : nullptr;

      for (int64_t k = T - 1; k >= 0; --k) {
        const int64_t t = idx.reverse ? T - 1 - k : k;
        const int64_t n = active_rows[t];
        const scalar_t* dhs = dh_state.data_ptr<scalar_t>();
        scalar_t* dhn = dh_next.data_ptr<scalar_t>();
        if (s.proj) {
          // dL/dh_t (P-space) for all rows, then back through the projection in one GEMM.
          for (int64_t b = 0; b < B; ++b) {
            scalar_t* dst = dha_all + (t * B + b) * P;
            const scalar_t* gy_row = gy + (t * B + b) * D * P + d * P;
            if (!idx.active(t, b)) {
              std::fill(dst, dst + P, scalar_t(0));
              continue;
            }
            for (int64_t j = 0; j < P; ++j) {
              dst[j] = static_cast<scalar_t>(static_cast<opmath_t>(dhs[b * P + j]) + static_cast<opmath_t>(gy_row[j]));
            }
          }
          if (n > 0) {
            at::Tensor dr_n = dr_buf.narrow(0, 0, n);
            at::mm_out(dr_n, dh_all[t].narrow(0, 0, n), w_hr->select(0, d));
          }
        }
        at::parallel_for(0, B, row_grain(GH), [&](int64_t begin, int64_t end) {
          for (int64_t b = begin; b < end; ++b) {
            const int64_t tb = t * B + b;
            scalar_t* dgx_row = dgx_p + tb * GH;
            scalar_t* dgh_row = dgh_p + tb * GH;
            if (!idx.active(t, b)) {
              // The state passes through untouched, and so does its gradient.
              std::fill(dgx_row, dgx_row + GH, scalar_t(0));
              if (dgh_row != dgx_row) std::fill(dgh_row, dgh_row + GH, scalar_t(0));
              std::copy(dhs + b * P, dhs + (b + 1) * P, dhn + b * P);
              if (r_all_p) std::fill(r_all_p + tb * H, r_all_p + (tb + 1) * H, scalar_t(0));
              continue;
            }
            const bool first = idx.first(t, b);
            BwdRow<scalar_t> row;
            row.saved = sv ? sv + tb * W : nullptr;
            row.h = yp + tb * D * P + d * P;
            row.h_prev = first ? h0p + b * P : yp + (idx.prev(t) * B + b) * D * P + d * P;
            row.c_prev = !Cell::kHasCellState ? nullptr : first ? c0p + b * H : sv + (idx.prev(t) * B + b) * W + Cell::kCellOffset * H;
            row.dh_a = s.proj ? drb + b * H : dhs + b * P;
            row.dh_b = s.proj ? nullptr : gy + tb * D * P + d * P;
            row.dc = dcs ? dcs + b * H : nullptr;
            row.dgx = dgx_row;
            row.dgh = dgh_row;
            row.dh_direct = dhn + b * P;
            row.r_out = r_all_p ? r_all_p + tb * H : nullptr;
            Cell::backward_row(row, H);
            if (!Cell::kHasDirectPath) {
              std::fill(dhn + b * P, dhn + (b + 1) * P, scalar_t(0));
            }
          }
        });
        if (n > 0) {
          // Rows among the first n that are inactive have zero gate gradients: unaffected.
          dh_next.narrow(0, 0, n).addmm_(dgh[t].narrow(0, 0, n), w_hh_d);
        }
        dh_state.copy_(dh_next);
      }

      // Weight gradients as single GEMMs over all steps.
      const at::Tensor dgh_2d = dgh.reshape({T * B, GH});
      at::Tensor h_prev_all = states_entering_each_step(idx, B, P, yp + d * P, D * P, h0p, opts);
      at::Tensor grad_w_hh_d = grad_w_hh[d];
      at::mm_out(grad_w_hh_d, dgh_2d.t(), h_prev_all.view({T * B, P}));
      if (grad_b_hh.defined()) {
        at::Tensor grad_b_hh_d = grad_b_hh[d];
        at::sum_out(grad_b_hh_d, dgh_2d, at::IntArrayRef{0});
      }
      if (s.proj) {
        at::Tensor grad_w_hr_d = grad_w_hr[d];
        at::mm_out(grad_w_hr_d, dh_all.view({T * B, P}).t(), r_all.view({T * B, H}));
      }
    }
  }
};


// ---------------------------------------------------------------- op entry points

// Forward of one layer. Returns y [T, B, D*P], hn [D, B, P], cn [D, B, H] (undefined
// unless the cell has a cell state) and the workspace [D, T, B, kSaved*H] (empty [0] when
// save_for_backward is false).
template <template <typename> class CellT>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_forward(
    const char* op, const at::Tensor& x_proj_in, const at::Tensor& h0_in, const at::Tensor* c0_in,
    const at::Tensor& w_hh_in, const c10::optional<at::Tensor>& b_hh_in, const c10::optional<at::Tensor>& w_hr_in,
    const c10::optional<at::Tensor>& lengths, bool save) {
  using Probe = CellT<float>;
  const LayerSizes s = check_layer_args(op, Probe::kGates, x_proj_in, h0_in, c0_in, w_hh_in, b_hh_in, w_hr_in, lengths);
  TORCH_CHECK(x_proj_in.device().is_cpu(), op, ": the CPU kernel got x_proj on ", x_proj_in.device());
  const std::vector<int64_t> active_rows = active_rows_per_step(op, lengths, s.T, s.B);
  const at::Tensor x_proj = x_proj_in.contiguous();
  const at::Tensor h0 = h0_in.contiguous();
  const at::Tensor c0 = c0_in ? c0_in->contiguous() : at::Tensor();
  const at::Tensor w_hh = w_hh_in.contiguous();
  const c10::optional<at::Tensor> b_hh = b_hh_in ? c10::optional<at::Tensor>(b_hh_in->contiguous()) : c10::nullopt;
  const c10::optional<at::Tensor> w_hr = w_hr_in ? c10::optional<at::Tensor>(w_hr_in->contiguous()) : c10::nullopt;
  const at::Tensor lengths_c = lengths ? lengths->contiguous() : at::Tensor();

  at::Tensor y = new_output(x_proj, {s.T, s.B, s.D * s.P});
  at::Tensor hn = new_output(x_proj, {s.D, s.B, s.P});
  at::Tensor cn = Probe::kHasCellState ? new_output(x_proj, {s.D, s.B, s.H}) : at::Tensor();
  at::Tensor saved = save ? new_output(x_proj, {s.D, s.T, s.B, Probe::kSaved * s.H}) : new_output(x_proj, {0});
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_proj.scalar_type(), "fastrnn_layer_forward", [&] {
    Engine<CellT<scalar_t>, scalar_t>::forward(s, x_proj, h0, c0, w_hh, b_hh, w_hr, lengths_c, active_rows, save, y,
                                               hn, cn, saved);
  });
  return {y, hn, cn, saved};
}

// Backward of one layer. Returns grad_x_proj, grad_h0, grad_c0 (undefined without a cell
// state), grad_w_hh, grad_b_hh (empty [0] without b_hh) and grad_w_hr (empty [0] without w_hr).
template <template <typename> class CellT>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> layer_backward(
    const char* op, const at::Tensor& grad_y_in, const at::Tensor& grad_hn_in, const at::Tensor* grad_cn_in,
    const at::Tensor& h0_in, const at::Tensor* c0_in, const at::Tensor& w_hh_in,
    const c10::optional<at::Tensor>& b_hh_in, const c10::optional<at::Tensor>& w_hr_in,
    const c10::optional<at::Tensor>& lengths, const at::Tensor& y_in, const at::Tensor& saved_in) {
  using Probe = CellT<float>;
  TORCH_CHECK(y_in.dim() == 3, op, ": y must be 3-D [T, B, D*P] but got shape ", y_in.sizes());
  TORCH_CHECK(w_hh_in.dim() == 3 && w_hh_in.size(0) >= 1, op, ": w_hh must be 3-D [D, G*H, P] but got shape ",
              w_hh_in.sizes());
  const int64_t D = w_hh_in.size(0);
  const int64_t T = y_in.size(0), B = y_in.size(1);
  // A stand-in x_proj of the right shape lets the forward checks validate everything else.
  const at::Tensor x_proj_shape = at::empty({1}, y_in.options()).expand({D, T, B, w_hh_in.size(1)});
  const LayerSizes s = check_layer_args(op, Probe::kGates, x_proj_shape, h0_in, c0_in, w_hh_in, b_hh_in, w_hr_in,
                                        lengths);
  TORCH_CHECK(y_in.device().is_cpu(), op, ": the CPU kernel got y on ", y_in.device());
  check_shape(op, "y", y_in, {s.T, s.B, s.D * s.P});
  check_same_dtype_device(op, "grad_y", grad_y_in, y_in);
  check_shape(op, "grad_y", grad_y_in, {s.T, s.B, s.D * s.P});
  check_same_dtype_device(op, "grad_hn", grad_hn_in, y_in);
  check_shape(op, "grad_hn", grad_hn_in, {s.D, s.B, s.P});
  if (grad_cn_in) {
    check_same_dtype_device(op, "grad_cn", *grad_cn_in, y_in);
    check_shape(op, "grad_cn", *grad_cn_in, {s.D, s.B, s.H});
  }
  check_same_dtype_device(op, "workspace", saved_in, y_in);
  check_shape(op, "workspace", saved_in, {s.D, s.T, s.B, Probe::kSaved * s.H});
  const std::vector<int64_t> active_rows = active_rows_per_step(op, lengths, s.T, s.B);

  const at::Tensor grad_y = grad_y_in.contiguous();
  const at::Tensor grad_hn = grad_hn_in.contiguous();
  const at::Tensor grad_cn = grad_cn_in ? grad_cn_in->contiguous() : at::Tensor();
  const at::Tensor h0 = h0_in.contiguous();
  const at::Tensor c0 = c0_in ? c0_in->contiguous() : at::Tensor();
  const at::Tensor w_hh = w_hh_in.contiguous();
  const c10::optional<at::Tensor> w_hr = w_hr_in ? c10::optional<at::Tensor>(w_hr_in->contiguous()) : c10::nullopt;
  const at::Tensor lengths_c = lengths ? lengths->contiguous() : at::Tensor();
  const at::Tensor y = y_in.contiguous();
  const at::Tensor saved = saved_in.contiguous();

  const int64_t GH = s.G * s.H;
  at::Tensor grad_x_proj = new_output(y, {s.D, s.T, s.B, GH});
  at::Tensor grad_h0 = new_output(y, {s.D, s.B, s.P});
  at::Tensor grad_c0 = Probe::kHasCellState ? new_output(y, {s.D, s.B, s.H}) : at::Tensor();
  at::Tensor grad_w_hh = new_output(y, {s.D, GH, s.P});
  at::Tensor grad_b_hh = b_hh_in ? new_output(y, {s.D, GH}) : at::Tensor();
  at::Tensor grad_w_hr = s.proj ? new_output(y, {s.D, s.P, s.H}) : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "fastrnn_layer_backward", [&] {
    Engine<CellT<scalar_t>, scalar_t>::backward(s, grad_y, grad_hn, grad_cn, h0, c0, w_hh, w_hr, lengths_c,
                                                active_rows, y, saved, grad_x_proj, grad_h0, grad_c0, grad_w_hh,
                                                grad_b_hh, grad_w_hr);
  });
  if (!grad_b_hh.defined()) grad_b_hh = at::empty({0}, y.options());
  if (!grad_w_hr.defined()) grad_w_hr = at::empty({0}, y.options());
  return {grad_x_proj, grad_h0, grad_c0, grad_w_hh, grad_b_hh, grad_w_hr};
}

}  // namespace cpu
}  // namespace fastrnn
