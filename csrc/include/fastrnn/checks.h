// Argument checks shared by every op. Messages name the op, the tensor, what was expected
// and what was given, e.g. "fastrnn::lstm_layer: h0 must have shape [1, 4, 8] but got [1, 4, 7]".
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <vector>

namespace fastrnn {

inline void check_shape(const char* op, const char* name, const at::Tensor& t, c10::IntArrayRef expected) {
  TORCH_CHECK(t.sizes().equals(expected), op, ": ", name, " must have shape ", expected, " but got ", t.sizes());
}

inline void check_same_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " must be on ", ref.device(),
              " (the device of the layer input) but is on ", t.device());
}

inline void check_same_dtype_device(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " must have dtype ", ref.scalar_type(),
              " (the dtype of the layer input) but got ", t.scalar_type());
  check_same_device(op, name, t, ref);
}

// Sizes of one layer call. Letters as everywhere: D directions, T time, B batch,
// G gates, H hidden, P output features per direction (proj_size, or H without projection).
struct LayerSizes {
  int64_t D, T, B, G, H, P;
  bool proj;
};

// The shape of the input projection x_proj = W_ih x + b_ih, [D, T, B, G*H], and the tensor whose dtype
// and device every other argument must have (the layer input x).
struct ProjectionShape {
  int64_t D, T, B, GH;
  const at::Tensor& x;
};

// The layer input x [T, B, I] and its projection weights w_ih [D, G*H, I], b_ih [D, G*H]:
// validated, then the projection's shape for check_layer_args, so that every later message names
// what the caller passed. (Sizes only: a stand-in tensor cost two dispatcher calls per op call.)
inline ProjectionShape check_input_args(const char* op, int64_t G, const at::Tensor& x, const at::Tensor& w_ih,
                                   const c10::optional<at::Tensor>& b_ih) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D [T, B, I] but got ", x.dim(), "-D with shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": x must be a floating point tensor but got ",
              x.scalar_type());
  TORCH_CHECK(w_ih.dim() == 3, op, ": w_ih must be 3-D [D, G*H, I] but got shape ", w_ih.sizes());
  check_same_dtype_device(op, "w_ih", w_ih, x);
  TORCH_CHECK(w_ih.size(0) == 1 || w_ih.size(0) == 2, op, ": w_ih.size(0) (directions) must be 1 or 2 but got ",
              w_ih.size(0));
  // H = 0 is allowed: torch.nn's cells run with hidden_size=0 (layer_io.h: no_hidden_units).
  TORCH_CHECK(w_ih.size(1) % G == 0, op, ": w_ih.size(1) must be a multiple of ", G, " (gates) but got ",
              w_ih.size(1));
  TORCH_CHECK(w_ih.size(2) == x.size(2), op, ": w_ih must be [D, G*H, I] with I = x.size(2) = ", x.size(2),
              " but got shape ", w_ih.sizes());
  if (b_ih.has_value()) {
    check_same_dtype_device(op, "b_ih", *b_ih, x);
    check_shape(op, "b_ih", *b_ih, {w_ih.size(0), w_ih.size(1)});
  }
  return {w_ih.size(0), x.size(0), x.size(1), w_ih.size(1), x};
}

// x_proj [D, T, B, G*H], h0 [D, B, P], c0 [D, B, H] (LSTM only), w_hh [D, G*H, P],
// b_hh [D, G*H], w_hr [D, P, H] (LSTM only), lengths [B] int64 on the CPU.
inline LayerSizes check_layer_args(const char* op, int64_t G, const ProjectionShape& proj_shape, const at::Tensor& h0,
                                   const at::Tensor* c0, const at::Tensor& w_hh,
                                   const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_hr,
                                   const c10::optional<at::Tensor>& lengths) {
  const at::Tensor& x_proj = proj_shape.x;  // (the dtype and device all must have)
  TORCH_CHECK(at::isFloatingType(x_proj.scalar_type()), op, ": x must be a floating point tensor but got ",
              x_proj.scalar_type());
  LayerSizes s;
  s.D = proj_shape.D;
  s.T = proj_shape.T;
  s.B = proj_shape.B;
  s.G = G;
  TORCH_CHECK(s.D == 1 || s.D == 2, op, ": w_ih.size(0) (directions) must be 1 or 2 but got ", s.D);
  TORCH_CHECK(proj_shape.GH % G == 0, op, ": w_ih.size(1) must be a multiple of ", G, " (gates) but got ",
              proj_shape.GH);
  s.H = proj_shape.GH / G;
  TORCH_CHECK(w_hh.dim() == 3, op, ": w_hh must be 3-D [D, G*H, P] but got shape ", w_hh.sizes());
  s.P = w_hh.size(2);
  s.proj = w_hr.has_value();
  check_same_dtype_device(op, "w_hh", w_hh, x_proj);
  check_shape(op, "w_hh", w_hh, {s.D, G * s.H, s.P});
  check_same_dtype_device(op, "h0", h0, x_proj);
  check_shape(op, "h0", h0, {s.D, s.B, s.P});
  if (c0 != nullptr) {
    check_same_dtype_device(op, "c0", *c0, x_proj);
    check_shape(op, "c0", *c0, {s.D, s.B, s.H});
  }
  if (b_hh.has_value()) {
    check_same_dtype_device(op, "b_hh", *b_hh, x_proj);
    check_shape(op, "b_hh", *b_hh, {s.D, G * s.H});
  }
  if (s.proj) {
    check_same_dtype_device(op, "w_hr", *w_hr, x_proj);
    TORCH_CHECK(s.P >= 1 && s.P < s.H, op, ": with w_hr the projection size P = ", s.P,
                " must be in [1, H - 1] with H = ", s.H);
    check_shape(op, "w_hr", *w_hr, {s.D, s.P, s.H});
  } else {
    TORCH_CHECK(s.P == s.H, op, ": without w_hr, w_hh must be [D, G*H, H] = ", at::IntArrayRef({s.D, G * s.H, s.H}),
                " but got ", w_hh.sizes());
  }
  if (lengths.has_value()) {
    TORCH_CHECK(lengths->scalar_type() == at::kLong, op, ": lengths must be int64 but got ", lengths->scalar_type());
    TORCH_CHECK(lengths->device().is_cpu(), op, ": lengths must be on the CPU but is on ", lengths->device());
    check_shape(op, "lengths", *lengths, {s.B});
  }
  return s;
}

// The backward's extra arguments against the forward's sizes: y and grad_y [T, B, D*P],
// grad_hn [D, B, P], grad_cn [D, B, H] (LSTM), the workspace [D, T, B, saved_per_unit*H].
inline void check_backward_args(const char* op, const LayerSizes& s, int64_t saved_per_unit, const at::Tensor& grad_y,
                                const at::Tensor& grad_hn, const at::Tensor* grad_cn, const at::Tensor& x,
                                const at::Tensor& y, const at::Tensor& workspace) {
  check_same_dtype_device(op, "y", y, x);
  check_shape(op, "y", y, {s.T, s.B, s.D * s.P});
  check_same_dtype_device(op, "grad_y", grad_y, x);
  check_shape(op, "grad_y", grad_y, {s.T, s.B, s.D * s.P});
  check_same_dtype_device(op, "grad_hn", grad_hn, x);
  check_shape(op, "grad_hn", grad_hn, {s.D, s.B, s.P});
  if (grad_cn) {
    check_same_dtype_device(op, "grad_cn", *grad_cn, x);
    check_shape(op, "grad_cn", *grad_cn, {s.D, s.B, s.H});
  }
  check_same_dtype_device(op, "workspace", workspace, x);
  check_shape(op, "workspace", workspace, {s.D, s.T, s.B, saved_per_unit * s.H});
}

}  // namespace fastrnn
