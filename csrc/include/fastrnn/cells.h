// Gate math of every cell, written once and shared by the CPU and CUDA kernels.
//
// Everything here works on one hidden unit j of one batch row, in the compute type T
// (at::opmath_type<scalar_t>: float for half/bfloat16). Conventions are torch.nn's:
//   LSTM gates i, f, g, o;  GRU gates r, z, n with n = tanh(x_n + r * (W_hn h + b_hn)).
// Backward derivatives use the saved activations (d sigmoid = s(1-s), d tanh = 1-t^2),
// never recomputed pre-activations.
#pragma once

#include <cmath>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTRNN_HOST_DEVICE __host__ __device__
#else
#define FASTRNN_HOST_DEVICE
#endif

namespace fastrnn {
namespace cells {

// The elementary functions, as a trait so that the CPU kernels can run the same gate math
// on SIMD vectors (csrc/cpu/pointwise.h specializes Math for at::vec::Vectorized).
template <typename T>
struct Math {
  static FASTRNN_HOST_DEVICE T exp(T x) {
#ifdef __CUDA_ARCH__
    return ::exp(x);
#else
    return std::exp(x);
#endif
  }
  static FASTRNN_HOST_DEVICE T tanh(T x) {
#ifdef __CUDA_ARCH__
    return ::tanh(x);
#else
    return std::tanh(x);
#endif
  }
  static FASTRNN_HOST_DEVICE T sigmoid(T x) { return T(1) / (T(1) + exp(T(0) - x)); }
  // Written so that NaN propagates as in torch: relu(NaN) = NaN, and a NaN h passes dh through.
  static FASTRNN_HOST_DEVICE T relu(T x) { return x < T(0) ? T(0) : x; }
  // d relu from the saved output h: 0 where h <= 0, else dh (torch's threshold_backward).
  static FASTRNN_HOST_DEVICE T relu_backward(T h, T dh) { return h <= T(0) ? T(0) : dh; }
};

template <typename T>
FASTRNN_HOST_DEVICE inline T tanh_(T x) {
  return Math<T>::tanh(x);
}

template <typename T>
FASTRNN_HOST_DEVICE inline T sigmoid(T x) {
  return Math<T>::sigmoid(x);
}

// ---------------------------------------------------------------- LSTM
// pre_* are the gate pre-activations (W_ih x + b_ih + W_hh h + b_hh).
template <typename T>
struct LstmForward {
  T i, f, g, o, c, h;  // h = o * tanh(c); with proj_size this is r, projected afterwards
};

template <typename T>
FASTRNN_HOST_DEVICE inline LstmForward<T> lstm_forward(T pre_i, T pre_f, T pre_g, T pre_o, T c_prev) {
  LstmForward<T> s;
  s.i = sigmoid(pre_i);
  s.f = sigmoid(pre_f);
  s.g = tanh_(pre_g);
  s.o = sigmoid(pre_o);
  s.c = s.f * c_prev + s.i * s.g;
  s.h = s.o * tanh_(s.c);
  return s;
}

template <typename T>
struct LstmBackward {
  T d_i, d_f, d_g, d_o;  // gradients of the gate pre-activations
  T d_c_prev;
};

// dh: gradient w.r.t. this step's h (before projection); dc: gradient w.r.t. this step's c
// arriving from the next step.
template <typename T>
FASTRNN_HOST_DEVICE inline LstmBackward<T> lstm_backward(T i, T f, T g, T o, T c, T c_prev, T dh, T dc) {
  const T tanh_c = tanh_(c);
  const T dc_total = dc + dh * o * (T(1) - tanh_c * tanh_c);
  LstmBackward<T> b;
  b.d_i = dc_total * g * i * (T(1) - i);
  b.d_f = dc_total * c_prev * f * (T(1) - f);
  b.d_g = dc_total * i * (T(1) - g * g);
  b.d_o = dh * tanh_c * o * (T(1) - o);
  b.d_c_prev = dc_total * f;
  return b;
}

// ---------------------------------------------------------------- GRU
// x_*: input projections (W_ih x + b_ih); h_*: recurrent projections (W_hh h + b_hh).
template <typename T>
struct GruForward {
  T r, z, n, h;
};

template <typename T>
FASTRNN_HOST_DEVICE inline GruForward<T> gru_forward(T x_r, T x_z, T x_n, T h_r, T h_z, T h_n, T h_prev) {
  GruForward<T> s;
  s.r = sigmoid(x_r + h_r);
  s.z = sigmoid(x_z + h_z);
  s.n = tanh_(x_n + s.r * h_n);
  s.h = (T(1) - s.z) * s.n + s.z * h_prev;
  return s;
}

template <typename T>
struct GruBackward {
  T d_r, d_z, d_xn;  // pre-activation gradients; d_r and d_z feed both projections
  T d_hn;            // gradient w.r.t. W_hn h + b_hn (= d_xn * r)
  T d_h_prev;        // the direct path h_prev -> h through z
};

// h_n: the saved recurrent projection of the n gate (W_hn h + b_hn).
template <typename T>
FASTRNN_HOST_DEVICE inline GruBackward<T> gru_backward(T r, T z, T n, T h_n, T h_prev, T dh) {
  GruBackward<T> b;
  const T dn_pre = dh * (T(1) - z) * (T(1) - n * n);
  b.d_xn = dn_pre;
  b.d_hn = dn_pre * r;
  b.d_r = dn_pre * h_n * r * (T(1) - r);
  b.d_z = dh * (h_prev - n) * z * (T(1) - z);
  b.d_h_prev = dh * z;
  return b;
}

// ---------------------------------------------------------------- RNN (tanh / relu)
template <bool kRelu, typename T>
FASTRNN_HOST_DEVICE inline T rnn_forward(T pre) {
  if (kRelu) {
    return Math<T>::relu(pre);
  }
  return tanh_(pre);
}

// h: the saved output of this step.
template <bool kRelu, typename T>
FASTRNN_HOST_DEVICE inline T rnn_backward(T h, T dh) {
  if (kRelu) {
    return Math<T>::relu_backward(h, dh);
  }
  return dh * (T(1) - h * h);
}

}  // namespace cells
}  // namespace fastrnn
