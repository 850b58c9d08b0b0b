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

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace fastrnn {
namespace cells {

// The functions of Math<T> (cells.h) on at::vec vectors.
template <typename S>
struct VecMath {
  using V = at::vec::Vectorized<S>;
  static V exp(V x) { return x.exp(); }
  static V sigmoid(V x) { return V(S(1)) / (V(S(1)) + (V(S(0)) - x).exp()); }
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
  static V relu_backward(V h, V dh) { return V::blendv(dh, V(S(0)), h <= V(S(0))); }
};

template <typename S>
struct Math<at::vec::Vectorized<S>> : VecMath<S> {};

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
// Float sigmoid and tanh in AVX-512 / AVX2 intrinsics. With Sleef's exp and true divisions
// the LSTM pointwise pass took as long as the step's GEMM at B=8, H=128 (about 8 ns per
// unit): Sleef's exp is an out-of-line call that spills, and each of the five divisions
// per unit costs ~10 cycles of throughput. Here exp is inline (range reduction to
// |r| <= ln2/2, Taylor series to r^7: truncation < 6e-9 relative, under float's 6e-8
// epsilon) and 1/d is the hardware reciprocal estimate plus two Newton steps.
// Saturation is exact: sigmoid and tanh are exactly 0 / 1 (tanh: +-1) wherever torch's are
// (thresholds below sigmoid), so their derivatives from the saved values, s (1 - s) and
// 1 - t^2, are exactly 0 there. One Newton step from AVX2's 12-bit estimate left 1/1 =
// 1 - 2^-24: an open LSTM forget gate then leaked its state through the recurrence, and
// saturated units had gradients of ~6e-8 times the input. tests/test_activations.py sweeps every float range against torch's own sigmoid
// and tanh and against float64, at every capability this CPU has. Internal linkage: the
// AVX2 and AVX-512 builds define the same names on different vector types.
namespace {
namespace simd {
#if defined(CPU_CAPABILITY_AVX512)
using R = __m512;
inline R set1(float v) { return _mm512_set1_ps(v); }
inline R add(R a, R b) { return _mm512_add_ps(a, b); }
inline R sub(R a, R b) { return _mm512_sub_ps(a, b); }
inline R mul(R a, R b) { return _mm512_mul_ps(a, b); }
inline R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
inline R fnmadd(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
// min/max return their second operand when either is NaN: callers pass x second so NaN stays.
inline R min(R a, R b) { return _mm512_min_ps(a, b); }
inline R max(R a, R b) { return _mm512_max_ps(a, b); }
inline R round_nearest(R a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline R times_pow2(R y, R n) { return _mm512_scalef_ps(y, n); }  // y * 2^n, n integral
inline R reciprocal_estimate(R d) { return _mm512_rcp14_ps(d); }  // 14 bits
inline R bit_and(R a, R b) { return _mm512_and_ps(a, b); }
inline R bit_or(R a, R b) { return _mm512_or_ps(a, b); }
inline R bit_andnot(R a, R b) { return _mm512_andnot_ps(a, b); }  // ~a & b
inline R select_if_less(R a, R b, R if_true, R if_false) {  // a < b ? if_true : if_false
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_LT_OQ), if_false, if_true);
}
#else
using R = __m256;
inline R set1(float v) { return _mm256_set1_ps(v); }
inline R add(R a, R b) { return _mm256_add_ps(a, b); }
inline R sub(R a, R b) { return _mm256_sub_ps(a, b); }
inline R mul(R a, R b) { return _mm256_mul_ps(a, b); }
inline R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
inline R fnmadd(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
inline R min(R a, R b) { return _mm256_min_ps(a, b); }
inline R max(R a, R b) { return _mm256_max_ps(a, b); }
inline R round_nearest(R a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline R times_pow2(R y, R n) {  // n in [-126, 127]: 2^n built in the exponent field
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
}
inline R reciprocal_estimate(R d) { return _mm256_rcp_ps(d); }  // 12 bits
inline R bit_and(R a, R b) { return _mm256_and_ps(a, b); }
inline R bit_or(R a, R b) { return _mm256_or_ps(a, b); }
inline R bit_andnot(R a, R b) { return _mm256_andnot_ps(a, b); }
inline R select_if_less(R a, R b, R if_true, R if_false) {
  return _mm256_blendv_ps(if_false, if_true, _mm256_cmp_ps(a, b, _CMP_LT_OQ));
}
#endif

// exp(x) for x clamped to [-87.3, 88]: finite and normal, so 1 + exp(x) never overflows and
// 2^n stays within the exponent field. NaN passes through.
inline R exp_clamped(R x) {
  x = max(set1(-87.3f), min(set1(88.0f), x));
  const R n = round_nearest(mul(x, set1(1.44269504088896341f)));
  // r = x - n ln2, with ln2 split in two so that n * (high part) is exact.
  R r = fnmadd(n, set1(0.693359375f), x);
  r = fnmadd(n, set1(-2.12194440e-4f), r);
  R p = set1(1.f / 5040);
  for (const float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 1.f / 2, 1.f, 1.f}) p = fmadd(p, r, set1(c));
  return times_pow2(p, n);
}

// 1 / d for finite d > 0: the estimate refined by two Newton steps, r + r (1 - d r), each
// squaring the relative error (AVX2: 2^-12 -> 2^-24 -> 2^-48; AVX-512: from 2^-14). With
// one step, AVX2's 1 / 1 came out as 1 - 2^-24 (see above); the second rounds it to 1.
inline R reciprocal(R d) {
  R r = reciprocal_estimate(d);
  r = fmadd(r, fnmadd(d, r, set1(1.f)), r);
  return fmadd(r, fnmadd(d, r, set1(1.f)), r);
}

// Where torch's float32 sigmoid and tanh saturate (its 1 / (1 + exp(-x)), and its tanh), as measured
// over every float: exactly there, not a few floats later, since this exp and torch's differ by an
// ulp or so and 1 + e rounding to 1 is decided by the last bit. sigmoid is 1 from 16.6355 (the
// correctly rounded one from 17.33: torch's formula rounds 1 + e first), and 0 below -88.72, where
// exp(-x) overflows (1 / inf; the clamp here keeps exp finite). tanh is +-1 from |x| = 9.0108.
// The comparisons are false for NaN, which passes through.
constexpr float kSigmoidZeroBelow = -88.72283172607422f;  // the float just above -ln(FLT_MAX)
constexpr float kSigmoidOneAbove = 16.635530471801758f;   // the float just below 16.63553237915039
constexpr float kTanhOneAbove = 9.010839462280273f;       // the float just below 9.01084041595459

inline R sigmoid(R x) {
  const R s = reciprocal(add(set1(1.f), exp_clamped(sub(set1(0.f), x))));
  return select_if_less(x, set1(kSigmoidZeroBelow), set1(0.f), select_if_less(set1(kSigmoidOneAbove), x, set1(1.f), s));
}

// Same split as the generic tanh above; the series stops at x^13 (truncation < 3e-11).
inline R tanh(R x) {
  const R sign = bit_and(x, set1(-0.f));
  const R a = bit_andnot(set1(-0.f), x);
  const R e = exp_clamped(mul(a, set1(-2.f)));
  const R r = reciprocal(add(set1(1.f), e));
  // For e < 1/4 (|x| > 0.69), 1 - 2e / (1 + e) with one rounding: 1 exactly where the correctly
  // rounded tanh is 1, not where 1 + e first rounds to 1 (a ulp early). Closer to 0 the
  // subtraction would cancel, and (1 - e) / (1 + e) is the accurate form.
  const R near_one = fnmadd(add(e, e), r, set1(1.f));
  const R magnitude = select_if_less(e, set1(0.25f), near_one, mul(sub(set1(1.f), e), r));
  const R large = bit_or(select_if_less(set1(kTanhOneAbove), a, set1(1.f), magnitude), sign);
  const R a2 = mul(a, a);
  R p = set1(21844.f / 6081075);
  for (const float c : {-1382.f / 155925, 62.f / 2835, -17.f / 315, 2.f / 15, -1.f / 3, 1.f}) p = fmadd(p, a2, set1(c));
  return select_if_less(a, set1(0.25f), mul(x, p), large);
}
}  // namespace simd
}  // namespace

template <>
struct Math<at::vec::Vectorized<float>> : VecMath<float> {
  static V sigmoid(V x) { return V(simd::sigmoid(x)); }
  static V tanh(V x) { return V(simd::tanh(x)); }
};
#endif

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
