// What every layer op does around its kernels, on any device: outputs poisoned under
// FASTRNN_DEBUG=1, the validation of the host-side lengths, the results of the cells without
// a cell state.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

#include "fastrnn/checks.h"

namespace fastrnn {

inline bool debug_poison() {
  const char* v = std::getenv("FASTRNN_DEBUG");
  return v != nullptr && v[0] != '\0' && std::strcmp(v, "0") != 0;
}

// Allocates an output; with FASTRNN_DEBUG=1 it is filled with NaN so that any element a
// kernel fails to write shows up in the tests. allocator: where its memory comes from (the CPU ops
// pass cpu/recycled_outputs.h's), or nullptr for torch's allocator of like's device.
inline at::Tensor new_output(const at::Tensor& like, at::IntArrayRef sizes, c10::Allocator* allocator = nullptr) {
  at::Tensor t = allocator == nullptr
                     ? at::empty(sizes, like.options())
                     : at::Tensor(at::detail::empty_generic(sizes, allocator, c10::DispatchKeySet(c10::DispatchKey::CPU),
                                                           like.scalar_type(), c10::nullopt));
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

// A layer op's outputs (new_output: NaN under FASTRNN_DEBUG=1): y [T, B, D*P], hn [D, B, P],
// cn [D, B, H] (undefined without a cell state), the workspace [D, T, B, saved_per_unit*H] (empty
// [0] unless save).
struct LayerOutputs {
  at::Tensor y, hn, cn, workspace;
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple() const { return {y, hn, cn, workspace}; }
};

inline LayerOutputs new_layer_outputs(const at::Tensor& x, const LayerSizes& s, bool has_cell_state,
                                      int64_t saved_per_unit, bool save, c10::Allocator* allocator = nullptr) {
  return {new_output(x, {s.T, s.B, s.D * s.P}, allocator), new_output(x, {s.D, s.B, s.P}, allocator),
          has_cell_state ? new_output(x, {s.D, s.B, s.H}, allocator) : at::Tensor(),
          save ? new_output(x, {s.D, s.T, s.B, saved_per_unit * s.H}, allocator) : new_output(x, {0})};
}

// A layer backward op's results; undefined where there is nothing to compute (grad_x unless
// need_grad_x, biases absent, no cell state, no projection).
struct LayerGrads {
  at::Tensor grad_x, grad_w_ih, grad_b_ih, grad_h0, grad_c0, grad_w_hh, grad_b_hh, grad_w_hr;
  // As the op returns them: empty [0] for the undefined ones, but grad_c0 (the LSTM op always has it).
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tuple(
      const at::TensorOptions& options) const {
    const auto or_empty = [&](const at::Tensor& t) { return t.defined() ? t : at::empty({0}, options); };
    return {or_empty(grad_x), grad_w_ih, or_empty(grad_b_ih), grad_h0, grad_c0, grad_w_hh, or_empty(grad_b_hh),
            or_empty(grad_w_hr)};
  }
};

inline LayerGrads new_layer_grads(const at::Tensor& x, const LayerSizes& s, bool has_b_ih, bool has_b_hh,
                                  bool has_cell_state, bool need_grad_x, c10::Allocator* allocator = nullptr) {
  const int64_t GH = s.G * s.H, I = x.size(2);
  return {need_grad_x ? new_output(x, {s.T, s.B, I}, allocator) : at::Tensor(),
          new_output(x, {s.D, GH, I}, allocator),
          has_b_ih ? new_output(x, {s.D, GH}, allocator) : at::Tensor(),
          new_output(x, {s.D, s.B, s.P}, allocator),
          has_cell_state ? new_output(x, {s.D, s.B, s.H}, allocator) : at::Tensor(),
          new_output(x, {s.D, GH, s.P}, allocator),
          has_b_hh ? new_output(x, {s.D, GH}, allocator) : at::Tensor(),
          s.proj ? new_output(x, {s.D, s.P, s.H}, allocator) : at::Tensor()};
}

// A layer without hidden units (H = 0: torch.nn's cells accept hidden_size=0 and return [B, 0]) has
// nothing to compute: its outputs (new_layer_outputs) have no elements, and so do its gradients but
// grad_x, which is zero. The kernels are not entered (their blocking assumes H >= 1).
inline bool no_hidden_units(const LayerSizes& s) { return s.H == 0; }

inline LayerGrads zero_input_grads(LayerGrads g) {
  if (g.grad_x.defined()) {
    g.grad_x.zero_();
  }
  return g;
}

// layer_backward's results for the cells without a cell state (GRU, RNN): all but grad_c0 and grad_w_hr.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> without_cell_state(
    const std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>&
        g) {
  return {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g), std::get<5>(g), std::get<6>(g)};
}


}  // namespace fastrnn
