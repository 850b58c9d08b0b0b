// Per-row pointwise kernels: the interface between the recurrence engine (recurrence.h) and
// the SIMD code (pointwise.h), which is compiled once per CPU capability and picked at run time.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace fastrnn {
namespace cpu {

// A row kernel runs hidden units [j0, j0 + count) of one batch row: every pointer below is
// already offset by j0, and gate q of a [G*H] block sits q * H further on (H passed to the
// kernel), except hg, whose gate blocks are hg_stride apart (the per-thread gate slices).

// Pointers into one batch row for the forward pointwise pass.
template <typename scalar_t>
struct FwdRow {
  const scalar_t* x;       // [G*H] input projection W_ih x + b_ih
  const scalar_t* hg;      // [G*hg_stride] recurrent projection W_hh h_prev (no bias)
  int64_t hg_stride;
  const scalar_t* bias;    // [G*H] b_hh, or nullptr
  const scalar_t* h_prev;  // [H] previous hidden state (may alias h_out)
  scalar_t* c;             // [H] LSTM cell state, read and updated in place
  scalar_t* h_out;         // [H] new hidden state (LSTM with projection: o * tanh(c))
  scalar_t* y_out;         // [H] second copy of the new hidden state, or nullptr
  scalar_t* saved;         // [S*H] workspace row, or nullptr in inference
};

// Pointers into one batch row for the backward pointwise pass.
template <typename scalar_t>
struct BwdRow {
  const scalar_t* saved;   // [S*H] workspace row written by forward
  const scalar_t* h;       // [H] this step's output (RNN)
  const scalar_t* h_prev;  // [H] previous hidden state (GRU)
  const scalar_t* c_prev;  // [H] previous cell state (LSTM)
  const scalar_t* dh_a;    // dh = dh_a + dh_b: gradient w.r.t. this step's h (pre-projection)
  const scalar_t* dh_b;    // may be nullptr
  scalar_t* dc;            // [H] LSTM: gradient w.r.t. c, in from step t+1, out to step t-1
  scalar_t* dgx;           // [G*H] gradient w.r.t. the input projection's gates
  scalar_t* dgh;           // [G*H] gradient w.r.t. the recurrent projection's gates
  scalar_t* dh_direct;     // [H] GRU: gradient to h_prev not through W_hh
  scalar_t* r_out;         // [H] LSTM with projection: o * tanh(c), for the W_hr gradient
};

template <typename scalar_t>
struct RowKernels {
  using Forward = void (*)(const FwdRow<scalar_t>&, int64_t H, int64_t count);
  using Backward = void (*)(const BwdRow<scalar_t>&, int64_t H, int64_t count);
  Forward lstm_forward, gru_forward, rnn_tanh_forward, rnn_relu_forward;
  Backward lstm_backward, gru_backward, rnn_tanh_backward, rnn_relu_backward;
};

// The kernels for the CPU capability torch runs at (AVX-512, AVX2 or portable).
template <typename scalar_t>
const RowKernels<scalar_t>& row_kernels();

namespace capability_default {
template <typename scalar_t>
RowKernels<scalar_t> make_row_kernels();
}
namespace capability_avx2 {
template <typename scalar_t>
RowKernels<scalar_t> make_row_kernels();
}
namespace capability_avx512 {
template <typename scalar_t>
RowKernels<scalar_t> make_row_kernels();
}

}  // namespace cpu
}  // namespace fastrnn
