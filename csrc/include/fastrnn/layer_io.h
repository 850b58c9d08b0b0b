// What every layer op does around its kernels, on any device: outputs poisoned under
// FASTRNN_DEBUG=1, the validation of the host-side lengths, the results of the cells without
// a cell state.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <tuple>
#include <vector>

namespace fastrnn {

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

// layer_backward's results for the cells without a cell state (GRU, RNN): all but grad_c0 and grad_w_hr.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> without_cell_state(
    const std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>&
        g) {
  return {std::get<0>(g), std::get<1>(g), std::get<2>(g), std::get<3>(g), std::get<5>(g), std::get<6>(g)};
}


}  // namespace fastrnn
