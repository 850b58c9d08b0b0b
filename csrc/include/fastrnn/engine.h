// The device-generic layer engine: one layer over the whole sequence (one or both directions),
// every GEMM an ATen op (cuBLAS on CUDA), every per-step pointwise pass a functor over the
// elements of one step (fastrnn/engine_steps.h), run by a Launcher policy:
//
//   struct Launcher {
//     // The device it runs on, and the time loop for the call (on CUDA: fastrnn/cuda_path.h):
//     // the persistent kernel's plan (fastrnn/persistent.h), or one with fits == false: stepwise.
//     static persistent::Plan check_call(const char* op, const LayerSizes& s, const at::Tensor& x);
//     // The persistent kernel's block program over plan.blocks() blocks (only called when it fits).
//     template <class Program> static void run_grid(const Program& p, const persistent::Plan& plan,
//                                                   int64_t shared_bytes);
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
// Two time loops: the stepwise one below (per step a batched GEMM and one functor launch), and,
// where the Launcher's plan says so, the persistent kernel's (fastrnn/persistent.h: one launch for
// the whole loop, the same functors per element); everything before and after the loop (the input
// projection, the weight and input gradients) is shared. The persistent loop's own CPU check is
// csrc/cpu/persistent_emulation.cpp (tests/test_persistent.py).
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

#include "fastrnn/checks.h"
#include "fastrnn/engine_steps.h"
#include "fastrnn/layer_io.h"
#include "fastrnn/persistent.h"

namespace fastrnn {
namespace engine {

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

// RealRows' per-step rows and compact offsets where the persistent kernel reads them. Without a
// gather (every row at every step) there are none: nothing is copied, so such a call can be captured
// in a CUDA graph.
template <typename Launcher>
struct StepRowsOnDevice {
  at::Tensor rows, offset;
  StepRowsOnDevice(const RealRows& r, const at::Tensor& x) {
    if (!r.compact()) return;
    rows = Launcher::host_to_device(at::tensor(r.rows, at::kLong), x);
    offset = Launcher::host_to_device(at::tensor(r.offset, at::kLong), x);
  }
  persistent::StepRows view(int64_t B) const {
    return {rows.defined() ? rows.data_ptr<int64_t>() : nullptr,
            offset.defined() ? offset.data_ptr<int64_t>() : nullptr, B};
  }
};

template <typename Launcher, typename Cell, typename scalar_t>
void forward(const LayerSizes& s, const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih,
             const at::Tensor& h0, const at::Tensor& c0, const at::Tensor& w_hh,
             const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr,
             const at::Tensor& lengths_dev, const RealRows& rows, const persistent::Plan& plan, bool save,
             at::Tensor& y, at::Tensor& hn, at::Tensor& cn, at::Tensor& saved) {
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
  const int64_t* len = lengths_dev.defined() ? lengths_dev.data_ptr<int64_t>() : nullptr;
  const Steps steps[2] = {{T, false, len}, {T, true, len}};
  if (plan.fits) {  // the persistent kernel runs the time loop (fastrnn/persistent.h)
    at::Tensor h_other = buffer(x, {D, B, P});
    h_other.copy_(h0);
    const StepRowsOnDevice<Launcher> step_rows(rows, x);
    const persistent::ForwardProgram<scalar_t, Cell> program{
        T, B, H, D, plan.blocks_per_direction, plan.units_per_block, plan.row_chunk, plan.forward, {steps[0], steps[1]},
        step_rows.view(B), xp.data_ptr<scalar_t>(), w_hh.data_ptr<scalar_t>(), b_hh.has_value() ? b_hh->data_ptr<scalar_t>() : nullptr,
        {h.data_ptr<scalar_t>(), h_other.data_ptr<scalar_t>()}, hg.data_ptr<scalar_t>(),
        Cell::kHasCellState ? cn.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
        save && Cell::kSaved > 0 ? saved.data_ptr<scalar_t>() : nullptr};
    Launcher::run_grid(program, plan, plan.forward_shared_bytes());
    hn.copy_(T % 2 == 0 ? h : h_other);  // step k wrote the buffer of parity k + 1
    return;
  }
  // Views made once (at small sizes the time loop's host cost counts).
  const at::Tensor w_hh_t = w_hh.transpose(1, 2);                            // [D, P, G*H]
  const at::Tensor w_hr_t = s.proj ? w_hr->transpose(1, 2) : at::Tensor();  // [D, H, P]
  const at::Tensor b_hh_all = b_hh.has_value() ? *b_hh : at::Tensor();
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
              const RealRows& rows, const persistent::Plan& plan, const at::Tensor& y, const at::Tensor& saved,
              at::Tensor& grad_x,
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
  if (plan.fits) {  // the persistent kernel runs the time loop (fastrnn/persistent.h)
    at::Tensor dgh_other = buffer(x, {D, B, GH});
    const StepRowsOnDevice<Launcher> step_rows(rows, x);
    const persistent::BackwardProgram<scalar_t, Cell> program{
        T, B, H, D, plan.blocks_per_direction, plan.units_per_block, plan.row_chunk, plan.backward, {steps[0], steps[1]},
        step_rows.view(B), w_hh.data_ptr<scalar_t>(), Cell::kSaved > 0 ? saved.data_ptr<scalar_t>() : nullptr,
        y.data_ptr<scalar_t>(), grad_y.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(),
        Cell::kHasCellState ? c0.data_ptr<scalar_t>() : nullptr, dh.data_ptr<scalar_t>(),
        Cell::kHasCellState ? grad_c0.data_ptr<scalar_t>() : nullptr,
        {dgh_step.data_ptr<scalar_t>(), dgh_other.data_ptr<scalar_t>()}, dgx.data_ptr<scalar_t>(),
        at_offset<scalar_t>(dgh_all, 0)};
    Launcher::run_grid(program, plan, plan.backward_shared_bytes());
  } else
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
  const persistent::Plan plan = Launcher::check_call(op, s, x_in);  // persistent, or (plan.fits false) stepwise
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
                                      contiguous(w_hr_in), lengths_dev, rows, plan, save, out.y, out.hn, out.cn, out.workspace);
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
  const persistent::Plan plan = Launcher::check_call(op, s, x_in);
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
                                       plan, y, saved, g.grad_x, g.grad_w_ih, g.grad_b_ih, g.grad_h0, g.grad_c0, g.grad_w_hh,
                                       g.grad_b_hh, g.grad_w_hr);
  });
  return g.tuple(x.options());
}

}  // namespace engine
}  // namespace fastrnn
