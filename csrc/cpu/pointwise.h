// The pointwise pass of every cell for one batch row, forward and backward, vectorised with
// at::vec (float, double) or scalar in float (half, bfloat16). The math itself is cells.h's.
//
// Included once per CPU capability by pointwise_<capability>.cpp, which defines
// FASTRNN_CAPABILITY_NS first. Everything here has internal linkage or lives in that
// namespace, so code compiled for AVX2 or AVX-512 never stands in for the portable build
// (tests/test_build.py checks the built library for AVX code outside these kernels).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "fastrnn/cells.h"
#include "rows.h"

namespace fastrnn {
namespace cells {

template <typename S>
struct Math<at::vec::Vectorized<S>> {
  using V = at::vec::Vectorized<S>;
  static V exp(V x) { return x.exp(); }
  // Sleef's vectorised tanh costs about four of its exps and dominated the LSTM step, so
  // tanh is built from exp: for |x| >= 1/4, (1 - e) / (1 + e) with e = exp(-2|x|), where
  // 1 - e >= 0.39 cancels nothing (error within a few ulp); below 1/4, tanh's odd Taylor
  // series to x^21, whose truncation error (< 1e-17 relative) is under double's epsilon.
  static V tanh(V x) {
    const V a = x.abs();
    const V e = (a * V(S(-2))).exp();
    const V large = (V(S(1)) - e) / (V(S(1)) + e);
    const V a2 = a * a;
    V p(S(9.691537956929451e-05));
    for (const S c : {S(-2.3912911424355248e-04), S(5.90027440945586e-04), S(-1.4558343870513183e-03),
                      S(3.592128036572481e-03), S(-8.863235529902197e-03), S(2.1869488536155203e-02),
                      S(-5.396825396825397e-02), S(1.3333333333333333e-01), S(-3.333333333333333e-01), S(1)}) {
      p = at::vec::fmadd(p, a2, V(c));
    }
    const V small = x * p;  // odd: carries x's sign, -0.0 included
    const V large_signed = V::blendv(large, large.neg(), x < V(S(0)));
    return V::blendv(large_signed, small, a < V(S(0.25)));
  }
  static V relu(V x) { return at::vec::clamp_min(x, V(S(0))); }
  static V relu_backward(V h, V dh) { return V::blendv(V(S(0)), dh, h > V(S(0))); }
};

}  // namespace cells

namespace cpu {
namespace FASTRNN_CAPABILITY_NS {
namespace {

// Loads and stores of up to kWidth consecutive values in the compute type.
template <typename scalar_t>
struct Lanes {
  using V = at::vec::Vectorized<scalar_t>;
  static constexpr int64_t kWidth = V::size();
  static V load(const scalar_t* p, int64_t n) { return V::loadu(p, n); }
  static void store(const V& v, scalar_t* p, int64_t n) { v.store(p, n); }
};

template <typename scalar_t>
struct ScalarLanes {  // half and bfloat16: computed one by one in float
  using V = float;
  static constexpr int64_t kWidth = 1;
  static V load(const scalar_t* p, int64_t) { return static_cast<float>(*p); }
  static void store(V v, scalar_t* p, int64_t) { *p = static_cast<scalar_t>(v); }
};
template <>
struct Lanes<c10::Half> : ScalarLanes<c10::Half> {};
template <>
struct Lanes<c10::BFloat16> : ScalarLanes<c10::BFloat16> {};

// Calls f(j, n) for each chunk [j, j + n) of the `count` hidden units.
template <typename L, typename F>
inline void for_each_chunk(int64_t count, const F& f) {
  for (int64_t j = 0; j < count; j += L::kWidth) {
    f(j, std::min<int64_t>(L::kWidth, count - j));
  }
}

template <typename L, typename scalar_t>
inline typename L::V load_dh(const BwdRow<scalar_t>& r, int64_t j, int64_t n) {
  auto dh = L::load(r.dh_a + j, n);
  if (r.dh_b) dh = dh + L::load(r.dh_b + j, n);
  return dh;
}

// ---------------------------------------------------------------- LSTM
// Workspace row: i, f, g, o (activated), c.
template <typename scalar_t>
void lstm_forward(const FwdRow<scalar_t>& r, int64_t H, int64_t count) {
  using L = Lanes<scalar_t>;
  using V = typename L::V;
  for_each_chunk<L>(count, [&](int64_t j, int64_t n) {
    V pre[4];
    for (int q = 0; q < 4; ++q) {
      pre[q] = L::load(r.x + q * H + j, n) + L::load(r.hg + q * r.hg_stride + j, n);
      if (r.bias) pre[q] = pre[q] + L::load(r.bias + q * H + j, n);
    }
    const auto s = cells::lstm_forward<V>(pre[0], pre[1], pre[2], pre[3], L::load(r.c + j, n));
    L::store(s.c, r.c + j, n);
    L::store(s.h, r.h_out + j, n);
    if (r.y_out) L::store(s.h, r.y_out + j, n);
    if (r.saved) {
      L::store(s.i, r.saved + j, n);
      L::store(s.f, r.saved + H + j, n);
      L::store(s.g, r.saved + 2 * H + j, n);
      L::store(s.o, r.saved + 3 * H + j, n);
      L::store(s.c, r.saved + 4 * H + j, n);
    }
  });
}

template <typename scalar_t>
void lstm_backward(const BwdRow<scalar_t>& r, int64_t H, int64_t count) {
  using L = Lanes<scalar_t>;
  using V = typename L::V;
  for_each_chunk<L>(count, [&](int64_t j, int64_t n) {
    const V i = L::load(r.saved + j, n), f = L::load(r.saved + H + j, n);
    const V g = L::load(r.saved + 2 * H + j, n), o = L::load(r.saved + 3 * H + j, n);
    const V c = L::load(r.saved + 4 * H + j, n);
    const auto b = cells::lstm_backward<V>(i, f, g, o, c, L::load(r.c_prev + j, n), load_dh<L>(r, j, n),
                                           L::load(r.dc + j, n));
    L::store(b.d_i, r.dgx + j, n);
    L::store(b.d_f, r.dgx + H + j, n);
    L::store(b.d_g, r.dgx + 2 * H + j, n);
    L::store(b.d_o, r.dgx + 3 * H + j, n);
    L::store(b.d_c_prev, r.dc + j, n);
    if (r.r_out) L::store(o * cells::tanh_(c), r.r_out + j, n);
  });
}

// ---------------------------------------------------------------- GRU
// Workspace row: r, z, n (activated), W_hn h + b_hn.
template <typename scalar_t>
void gru_forward(const FwdRow<scalar_t>& r, int64_t H, int64_t count) {
  using L = Lanes<scalar_t>;
  using V = typename L::V;
  for_each_chunk<L>(count, [&](int64_t j, int64_t n) {
    V hp[3];
    for (int q = 0; q < 3; ++q) {
      hp[q] = L::load(r.hg + q * r.hg_stride + j, n);
      if (r.bias) hp[q] = hp[q] + L::load(r.bias + q * H + j, n);
    }
    const auto s = cells::gru_forward<V>(L::load(r.x + j, n), L::load(r.x + H + j, n), L::load(r.x + 2 * H + j, n),
                                         hp[0], hp[1], hp[2], L::load(r.h_prev + j, n));
    L::store(s.h, r.h_out + j, n);
    if (r.y_out) L::store(s.h, r.y_out + j, n);
    if (r.saved) {
      L::store(s.r, r.saved + j, n);
      L::store(s.z, r.saved + H + j, n);
      L::store(s.n, r.saved + 2 * H + j, n);
      L::store(hp[2], r.saved + 3 * H + j, n);
    }
  });
}

template <typename scalar_t>
void gru_backward(const BwdRow<scalar_t>& r, int64_t H, int64_t count) {
  using L = Lanes<scalar_t>;
  using V = typename L::V;
  for_each_chunk<L>(count, [&](int64_t j, int64_t n) {
    const auto b = cells::gru_backward<V>(L::load(r.saved + j, n), L::load(r.saved + H + j, n),
                                          L::load(r.saved + 2 * H + j, n), L::load(r.saved + 3 * H + j, n),
                                          L::load(r.h_prev + j, n), load_dh<L>(r, j, n));
    L::store(b.d_r, r.dgx + j, n);
    L::store(b.d_r, r.dgh + j, n);
    L::store(b.d_z, r.dgx + H + j, n);
    L::store(b.d_z, r.dgh + H + j, n);
    L::store(b.d_xn, r.dgx + 2 * H + j, n);
    L::store(b.d_hn, r.dgh + 2 * H + j, n);
    L::store(b.d_h_prev, r.dh_direct + j, n);
  });
}

// ---------------------------------------------------------------- RNN (tanh / relu)
template <bool kRelu, typename scalar_t>
void rnn_forward(const FwdRow<scalar_t>& r, int64_t H, int64_t count) {
  using L = Lanes<scalar_t>;
  for_each_chunk<L>(count, [&](int64_t j, int64_t n) {
    auto pre = L::load(r.x + j, n) + L::load(r.hg + j, n);
    if (r.bias) pre = pre + L::load(r.bias + j, n);
    const auto h = cells::rnn_forward<kRelu>(pre);
    L::store(h, r.h_out + j, n);
    if (r.y_out) L::store(h, r.y_out + j, n);
  });
}

template <bool kRelu, typename scalar_t>
void rnn_backward(const BwdRow<scalar_t>& r, int64_t H, int64_t count) {
  using L = Lanes<scalar_t>;
  for_each_chunk<L>(count, [&](int64_t j, int64_t n) {
    L::store(cells::rnn_backward<kRelu>(L::load(r.h + j, n), load_dh<L>(r, j, n)), r.dgx + j, n);
  });
}

}  // namespace

template <typename scalar_t>
RowKernels<scalar_t> make_row_kernels() {
  RowKernels<scalar_t> k;
  k.lstm_forward = &lstm_forward<scalar_t>;
  k.gru_forward = &gru_forward<scalar_t>;
  k.rnn_tanh_forward = &rnn_forward<false, scalar_t>;
  k.rnn_relu_forward = &rnn_forward<true, scalar_t>;
  k.lstm_backward = &lstm_backward<scalar_t>;
  k.gru_backward = &gru_backward<scalar_t>;
  k.rnn_tanh_backward = &rnn_backward<false, scalar_t>;
  k.rnn_relu_backward = &rnn_backward<true, scalar_t>;
  return k;
}

}  // namespace FASTRNN_CAPABILITY_NS
}  // namespace cpu
}  // namespace fastrnn
