// The extension module fastrnn._C: every op schema in one place, and the build facts that
// fastrnn.backend_info() reports. Kernels register themselves per dispatch key in cpu/ and cuda/.
//
// Shapes (letters as in the docs): x [T, B, I] the layer input (time-major, padded), shared by
// both directions; w_ih [D, G*H, I] and b_ih [D, G*H] its projection x_proj = W_ih x + b_ih
// ([D, T, B, G*H]), which the op computes itself (cpu/recurrence.h: one GEMM, or blocks on a
// second thread for small steps); backward takes them again and returns their gradients too
// (grad_x only when need_grad_x, else empty [0]); h0/hn [D, B, P]; c0/cn [D, B, H]; w_hh [D, G*H, P]; b_hh [D, G*H]; w_hr [D, P, H];
// lengths [B] int64 on the CPU (None: every sequence has length T); y [T, B, D*P], both
// directions side by side as torch.nn returns them. The workspace holds what backward needs
// ([D, T, B, S*H]; S = 5 LSTM, 4 GRU, 0 RNN) or is empty [0] when save_for_backward is false.
// Backward ops return empty [0] tensors for gradients of absent optional arguments.
#include <pybind11/pybind11.h>
#include <torch/csrc/autograd/python_variable.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>
#include <torch/version.h>

#include <map>
#include <string>

#include "cpu/panel_gemm.h"
#include "cpu/recycled_outputs.h"
#include "cpu/scratch.h"
#include "fastrnn/autograd.h"
#include "fastrnn/cuda_path.h"
#include "fastrnn/persistent_emulation.h"
#include "fastrnn/device_checks.h"
#include "fastrnn/schemas.h"

#ifdef FASTRNN_WITH_CUDA
namespace fastrnn {
namespace cuda {
std::string compiled_archs();  // csrc/cuda/build_info.cu
}  // namespace cuda
}  // namespace fastrnn
#endif

TORCH_LIBRARY(fastrnn, m) {
  m.set_python_module("fastrnn._ops");
  fastrnn::define_layer_ops(m);
  fastrnn::define_cell_ops(m);
}

// Every tensor argument on x's device, whatever backend the dispatcher would pick (fastrnn/device_checks.h).
TORCH_LIBRARY_IMPL(fastrnn, BackendSelect, m) { fastrnn::register_device_checks(m); }

namespace fastrnn {

inline constexpr char kNamespace[] = "fastrnn";

std::vector<at::Tensor> differentiable_backward_in_python(const std::string& cell, const std::vector<bool>& needs,
                                                          const std::vector<at::Tensor>& inputs,
                                                          const std::vector<at::Tensor>& grad_outputs) {
  pybind11::gil_scoped_acquire gil;
  const auto to_python = [](const std::vector<at::Tensor>& ts) {
    pybind11::list out;
    for (const at::Tensor& t : ts) out.append(t.defined() ? pybind11::cast(t) : pybind11::none());
    return out;
  };
  pybind11::list needs_list;
  for (bool b : needs) needs_list.append(b);
  const pybind11::object result = pybind11::module_::import("fastrnn._ops")
                                      .attr("differentiable_backward")(cell, needs_list, to_python(inputs),
                                                                       to_python(grad_outputs));
  std::vector<at::Tensor> grads;
  for (const auto& g : result) grads.push_back(g.is_none() ? at::Tensor() : g.cast<at::Tensor>());
  return grads;
}

}  // namespace fastrnn

namespace fastrnn {
namespace {

bool any_requires_grad(std::initializer_list<const at::Tensor*> ts, const c10::optional<at::Tensor>& b_ih,
                       const c10::optional<at::Tensor>& b_hh) {
  if (!at::GradMode::is_enabled()) return false;
  for (const at::Tensor* t : ts) {
    if (t->requires_grad()) return true;
  }
  return (b_ih.has_value() && b_ih->requires_grad()) || (b_hh.has_value() && b_hh->requires_grad());
}

c10::optional<at::Tensor> unsqueezed(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? c10::optional<at::Tensor>(t->unsqueeze(0)) : c10::nullopt;
}

using Optional = c10::optional<at::Tensor>;

// The cells (schemas.h define_cell_ops): the layer op at T = 1, D = 1, *_layer when a gradient is needed,
// else *_layer_no_grad. What autograd's version check covers is torch.nn's cells': the input, the states and the
// weights (the op saves them), no bias, and RNNCell's output (tanh's and relu's gradients use it: its result is
// the op's y, which the op saves); LSTMCell and GRUCell return h_n, which nothing saves.
std::tuple<at::Tensor, at::Tensor> lstm_cell(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                             const at::Tensor& w_ih, const at::Tensor& w_hh, const Optional& b_ih,
                                             const Optional& b_hh) {
  using Signature = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const Optional&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const Optional&, const Optional&, const Optional&, bool);
  static const auto layer = c10::Dispatcher::singleton().findSchemaOrThrow("fastrnn::lstm_layer", "").typed<Signature>();
  static const auto no_grad =
      c10::Dispatcher::singleton().findSchemaOrThrow("fastrnn::lstm_layer_no_grad", "").typed<Signature>();
  const bool need_grad = any_requires_grad({&x, &h, &c, &w_ih, &w_hh}, b_ih, b_hh);
  auto [y, hn, cn, workspace] = (need_grad ? layer : no_grad)
                                    .call(x.unsqueeze(0), w_ih.unsqueeze(0), unsqueezed(b_ih), h.unsqueeze(0),
                                          c.unsqueeze(0), w_hh.unsqueeze(0), unsqueezed(b_hh), c10::nullopt,
                                          c10::nullopt, need_grad);
  return {hn.select(0, 0), cn.select(0, 0)};
}

template <const char* kLayer, const char* kNoGrad, bool kReturnsOutput>
at::Tensor single_state_cell(const at::Tensor& x, const at::Tensor& h, const at::Tensor& w_ih, const at::Tensor& w_hh,
                             const Optional& b_ih, const Optional& b_hh) {
  using Signature = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                    const Optional&, const at::Tensor&,
                                                                    const at::Tensor&, const Optional&,
                                                                    const Optional&, bool);
  static const auto layer = c10::Dispatcher::singleton().findSchemaOrThrow(kLayer, "").typed<Signature>();
  static const auto no_grad = c10::Dispatcher::singleton().findSchemaOrThrow(kNoGrad, "").typed<Signature>();
  const bool need_grad = any_requires_grad({&x, &h, &w_ih, &w_hh}, b_ih, b_hh);
  auto [y, hn, workspace] = (need_grad ? layer : no_grad)
                                .call(x.unsqueeze(0), w_ih.unsqueeze(0), unsqueezed(b_ih), h.unsqueeze(0),
                                      w_hh.unsqueeze(0), unsqueezed(b_hh), c10::nullopt, need_grad);
  return (kReturnsOutput ? y : hn).select(0, 0);
}

constexpr char kGruLayer[] = "fastrnn::gru_layer", kGruNoGrad[] = "fastrnn::gru_layer_no_grad";
constexpr char kTanhLayer[] = "fastrnn::rnn_tanh_layer", kTanhNoGrad[] = "fastrnn::rnn_tanh_layer_no_grad";
constexpr char kReluLayer[] = "fastrnn::rnn_relu_layer", kReluNoGrad[] = "fastrnn::rnn_relu_layer_no_grad";

// A cell module's common call, checked and run without leaving C++ (fastrnn.modules: each cell's forward
// calls it first). A cell step at small sizes costs about as much as the Python checks of its arguments, and
// Python run between ops runs cold (measured: a Python check costs twice as much right after an op as in a
// loop of its own), so these few checks are here. The result, or None for any other call (a non-tensor, a
// tensor with __torch_function__ or under a torch function mode, another rank, size, dtype, device or layout,
// a missing weight), which the module's Python then checks in torch.nn's order and serves. The caller has
// checked what Python knows (functional.plain_calls_allowed: no autocast, tracing, transform or compile).
// kind: 0 LSTM (hx, cx), 1 GRU, 2 RNN tanh, 3 RNN relu (hx; cx None); b_ih, b_hh None without bias; input_size and
// hidden_size the module's.
enum CellKind : int64_t { kLstmCell = 0, kGruCell = 1, kTanhCell = 2, kReluCell = 3 };

// OneDirectionFunction (autograd.h) for a cell kind.
template <bool kCellShaped>
torch::autograd::variable_list one_direction(int64_t kind, const at::Tensor& x, const at::Tensor& h, const Optional& c,
                                             const at::Tensor& w_ih, const at::Tensor& w_hh, const Optional& b_ih,
                                             const Optional& b_hh, bool output_saved, bool biases_saved) {
  switch (kind) {
    case kLstmCell:
      return OneDirectionFunction<kLstm, kCellShaped>::apply(x, h, c, w_ih, w_hh, b_ih, b_hh, output_saved,
                                                             biases_saved);
    case kGruCell:
      return OneDirectionFunction<kGru, kCellShaped>::apply(x, h, c, w_ih, w_hh, b_ih, b_hh, output_saved,
                                                            biases_saved);
    case kTanhCell:
      return OneDirectionFunction<kRnnTanh, kCellShaped>::apply(x, h, c, w_ih, w_hh, b_ih, b_hh, output_saved,
                                                                biases_saved);
    default:
      TORCH_CHECK(kind == kReluCell, "fastrnn: unknown cell kind ", kind);
      return OneDirectionFunction<kRnnRelu, kCellShaped>::apply(x, h, c, w_ih, w_hh, b_ih, b_hh, output_saved,
                                                                biases_saved);
  }
}

// A one-layer, one-direction layer's training call on padded input, its arguments checked by the module
// (fastrnn.modules RNNBase.forward: the plain call, every tensor of the module's sizes, dtype and device, a
// gradient needed): one autograd node (OneDirectionFunction) instead of the layer op's and a view node per weight
// and a copy's for the output. x [T, B, I], h0 and c0 (LSTM; else None) [1, B, H], the weights as the module holds
// them (biases None without bias); output_saved and biases_saved: whether torch.nn saves them (fastrnn.functional
// torch_nn_saves_output_and_biases). Returns (y, hn) or (y, (hn, cn)).
pybind11::object one_direction_layer(int64_t kind, const at::Tensor& x, const at::Tensor& h0,
                                     const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                                     const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                                     const c10::optional<at::Tensor>& b_hh, bool output_saved, bool biases_saved) {
  torch::autograd::variable_list out;
  {
    pybind11::gil_scoped_release no_gil;
    out = one_direction<false>(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, output_saved, biases_saved);
  }
  if (kind == kLstmCell) return pybind11::make_tuple(out[0], pybind11::make_tuple(out[1], out[2]));
  return pybind11::make_tuple(out[0], out[1]);
}

pybind11::object plain_cell(int64_t kind, pybind11::handle input, pybind11::handle hx, pybind11::handle cx,
                            pybind11::handle w_ih, pybind11::handle w_hh, pybind11::handle b_ih,
                            pybind11::handle b_hh, pybind11::handle bias_flag, int64_t input_size,
                            int64_t hidden_size) {
  const pybind11::object none = pybind11::none();
  // A torch.Tensor or an nn.Parameter, not a subclass (whose __torch_function__ torch.ops would call), or nullptr.
  const auto tensor = [](pybind11::handle h) -> const at::Tensor* {
    return THPVariable_CheckExact(h.ptr()) ? &THPVariable_Unpack(h.ptr()) : nullptr;
  };
  if (kind < kLstmCell || kind > kReluCell || at::impl::torch_function_mode_enabled()) return none;
  const int64_t G = kind == kLstmCell ? 4 : kind == kGruCell ? 3 : 1, H = hidden_size;
  const at::Tensor* x = tensor(input);
  if (!x || x->dim() != 2 || x->size(1) != input_size || x->layout() != at::kStrided) return none;
  const bool on_cpu = x->device().is_cpu();
#ifdef FASTRNN_WITH_CUDA
  if (!on_cpu && !x->device().is_cuda()) return none;
#else
  if (!on_cpu) return none;
#endif
  const int64_t B = x->size(0);
  const auto matches = [&](const at::Tensor* t, std::initializer_list<int64_t> sizes) {
    return t && t->sizes() == c10::IntArrayRef(sizes) && t->scalar_type() == x->scalar_type() &&
           t->device() == x->device() && t->layout() == at::kStrided;
  };
  // A state: absent (zeros), or [B, H] like x.
  const auto state = [&](pybind11::handle h, const at::Tensor** out) {
    *out = nullptr;
    if (h.is_none()) return true;
    *out = tensor(h);
    return matches(*out, {B, H});
  };
  const at::Tensor *h0 = nullptr, *c0 = nullptr;
  if (!state(hx, &h0) || (kind == kLstmCell ? !state(cx, &c0) : !cx.is_none())) return none;
  const at::Tensor *wi = tensor(w_ih), *wh = tensor(w_hh);
  if (!matches(wi, {G * H, input_size}) || !matches(wh, {G * H, H})) return none;
  Optional bi, bh;
  const int bias = PyObject_IsTrue(bias_flag.ptr());  // the module's bias, as torch.nn reads it (any truthy value)
  if (bias < 0) throw pybind11::error_already_set();
  if (bias) {
    const at::Tensor *pi = tensor(b_ih), *ph = tensor(b_hh);
    if (!matches(pi, {G * H}) || !matches(ph, {G * H})) return none;
    bi = *pi;
    bh = *ph;
  } else if (!b_ih.is_none() || !b_hh.is_none()) {
    return none;
  }
  at::Tensor h_out, c_out;
  {
    pybind11::gil_scoped_release no_gil;
    const auto zeros_or = [&](const at::Tensor* t) { return t ? *t : at::zeros({B, H}, x->options()); };
    if (any_requires_grad({x, h0 ? h0 : x, c0 ? c0 : x, wi, wh}, bi, bh)) {
      // A training step: one autograd node (autograd.h OneDirectionFunction) instead of the cell op's composite.
      const Optional c = kind == kLstmCell ? Optional(zeros_or(c0)) : c10::nullopt;
      const torch::autograd::variable_list out = one_direction<true>(kind, *x, zeros_or(h0), c, *wi, *wh, bi, bh,
                                                                     false, false);
      h_out = out[0];
      if (kind == kLstmCell) c_out = out[1];
    } else if (kind == kLstmCell) {
      static const auto op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("fastrnn::lstm_cell", "")
                                 .typed<decltype(lstm_cell)>();
      std::tie(h_out, c_out) = op.call(*x, zeros_or(h0), zeros_or(c0), *wi, *wh, bi, bh);
    } else {
      using Signature = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const Optional&, const Optional&);
      static const auto gru = c10::Dispatcher::singleton().findSchemaOrThrow("fastrnn::gru_cell", "").typed<Signature>();
      static const auto tanh =
          c10::Dispatcher::singleton().findSchemaOrThrow("fastrnn::rnn_tanh_cell", "").typed<Signature>();
      static const auto relu =
          c10::Dispatcher::singleton().findSchemaOrThrow("fastrnn::rnn_relu_cell", "").typed<Signature>();
      const auto& op = kind == kGruCell ? gru : kind == kTanhCell ? tanh : relu;
      h_out = op.call(*x, zeros_or(h0), *wi, *wh, bi, bh);
    }
  }
  if (kind == kLstmCell) {
    return pybind11::make_tuple(pybind11::reinterpret_steal<pybind11::object>(THPVariable_Wrap(h_out)),
                                pybind11::reinterpret_steal<pybind11::object>(THPVariable_Wrap(c_out)));
  }
  return pybind11::reinterpret_steal<pybind11::object>(THPVariable_Wrap(h_out));
}

}  // namespace
}  // namespace fastrnn

TORCH_LIBRARY_IMPL(fastrnn, CompositeImplicitAutograd, m) {
  m.impl("lstm_cell", &fastrnn::lstm_cell);
  m.impl("gru_cell", &fastrnn::single_state_cell<fastrnn::kGruLayer, fastrnn::kGruNoGrad, false>);
  m.impl("rnn_tanh_cell", &fastrnn::single_state_cell<fastrnn::kTanhLayer, fastrnn::kTanhNoGrad, true>);
  m.impl("rnn_relu_cell", &fastrnn::single_state_cell<fastrnn::kReluLayer, fastrnn::kReluNoGrad, true>);
}

// Autograd: the layer ops' (fastrnn/autograd.h) and the _no_grad ops' (fastrnn/schemas.h).
TORCH_LIBRARY_IMPL(fastrnn, Autograd, m) {
  fastrnn::register_layer_autograd<fastrnn::kNamespace>(m);
  fastrnn::register_no_grad_autograd(m);
}

namespace {
at::ScalarType scalar_type_named(const char* function, const std::string& dtype) {
  const std::map<std::string, at::ScalarType> dtypes = {
      {"float32", at::kFloat}, {"float64", at::kDouble}, {"float16", at::kHalf}, {"bfloat16", at::kBFloat16}};
  const auto found = dtypes.find(dtype);
  TORCH_CHECK(found != dtypes.end(), function, ": dtype must be float32, float64, float16 or bfloat16 but got '",
              dtype, "'");
  return found->second;
}
}  // namespace

PYBIND11_MODULE(_C, module) {
  module.doc() = "fastrnn compiled kernels; the ops live under torch.ops.fastrnn";
  module.def("build_info", [] {
    pybind11::dict info;
    info["torch"] = TORCH_VERSION;
    // The GEMM of each time step on the CPU in float (cpu/panel_gemm.h, cpu/recurrence.h PackedWeight).
    info["cpu_step_gemm"] = fastrnn::cpu::panel_gemm_kernel() != nullptr ? "fastrnn AVX2 panel kernel"
                                                                         : "BLAS (MKL packed sgemm where available)";
#ifdef FASTRNN_WITH_CUDA
    info["cuda"] = true;
    info["cuda_archs"] = fastrnn::cuda::compiled_archs();
#else
    info["cuda"] = false;
    info["cuda_archs"] = "";
#endif
    return info;
  });
  // The CPU kernels' kept scratch memory (cpu/scratch.h): fastrnn.empty_cache(), fastrnn.scratch_memory().
  module.def("empty_scratch_cache", &fastrnn::cpu::empty_scratch_cache,
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("scratch_bytes_kept", &fastrnn::cpu::scratch_bytes_kept,
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("scratch_limit_bytes", &fastrnn::cpu::scratch_limit_bytes);
  // The blocks of freed outputs kept for the next ones (cpu/recycled_outputs.h).
  module.def("empty_recycled_outputs", &fastrnn::cpu::empty_recycled_outputs,
             pybind11::call_guard<pybind11::gil_scoped_release>());
  module.def("recycled_output_bytes", &fastrnn::cpu::recycled_output_bytes,
             pybind11::call_guard<pybind11::gil_scoped_release>());
  // The device the persistent kernel's CPU emulation plans for (tests/test_persistent.py); returns the
  // limits before, as (multiprocessors, shared_bytes_per_block, threads_per_block, max_row_chunk,
  // tile, max_k_chunk, k_splits, tf32): fastrnn/persistent.h DeviceLimits.
  module.def(
      "set_persistent_emulation",
      [](int64_t multiprocessors, int64_t shared_bytes_per_block, int64_t threads_per_block, int64_t max_row_chunk,
         int64_t tile, int64_t max_k_chunk, int64_t k_splits, bool tf32) {
        const auto before = fastrnn::persistent::set_emulated_device(
            {multiprocessors, shared_bytes_per_block, threads_per_block, max_row_chunk, tile, max_k_chunk, k_splits,
             tf32});
        return std::make_tuple(before.multiprocessors, before.shared_bytes_per_block, before.threads_per_block,
                               before.max_row_chunk, before.tile, before.max_k_chunk, before.k_splits, before.tf32);
      },
      pybind11::arg("multiprocessors"), pybind11::arg("shared_bytes_per_block"), pybind11::arg("threads_per_block"),
      pybind11::arg("max_row_chunk") = 32, pybind11::arg("tile") = 0, pybind11::arg("max_k_chunk") = 0,
      pybind11::arg("k_splits") = 0, pybind11::arg("tf32") = false);
  module.def("plain_cell", &fastrnn::plain_cell);
  module.def("one_direction_layer", &fastrnn::one_direction_layer);
  // The CUDA path a layer call of these sizes would take (fastrnn/cuda_path.h), FASTRNN_CUDA_PATH
  // included, on a device with these limits (default: an H100/H200's 132 SMs and 227 KiB of shared
  // memory per block); callable without a GPU, for tests and for users asking what will run.
  module.def(
      "choose_cuda_path",
      [](int64_t D, int64_t T, int64_t B, int64_t H, int64_t P, const std::string& dtype, int sm, int64_t G,
         int64_t multiprocessors, int64_t shared_bytes_per_block) {
        const fastrnn::LayerSizes s{D, T, B, G, H, P, P != H};
        const at::ScalarType st = scalar_type_named("choose_cuda_path", dtype);
        const auto plan = fastrnn::persistent::make_plan(
            s, G, c10::elementSize(st),
            {multiprocessors, shared_bytes_per_block, fastrnn::persistent::kThreadsPerBlock});
        return std::string(fastrnn::cuda_path_name(fastrnn::choose_cuda_path("fastrnn", s, st, sm, plan)));
      },
      pybind11::arg("D"), pybind11::arg("T"), pybind11::arg("B"), pybind11::arg("H"), pybind11::arg("P"),
      pybind11::arg("dtype"), pybind11::arg("sm"), pybind11::arg("G") = 4, pybind11::arg("multiprocessors") = 132,
      pybind11::arg("shared_bytes_per_block") = 232448);
  // The persistent kernel's plan for a call (fastrnn/persistent.h make_plan), as a dict: for the cost
  // model (benchmarks/cost_model.py) and tests.
  module.def(
      "persistent_plan",
      [](int64_t D, int64_t B, int64_t H, int64_t P, int64_t G, const std::string& dtype, int64_t multiprocessors,
         int64_t shared_bytes_per_block, int64_t threads_per_block, int64_t tile, bool tf32) {
        const at::ScalarType st = scalar_type_named("persistent_plan", dtype);
        fastrnn::persistent::DeviceLimits limits{multiprocessors, shared_bytes_per_block, threads_per_block};
        limits.tile = tile;
        limits.tf32 = tf32;
        const auto p = fastrnn::persistent::make_plan({D, 0, B, G, H, P, P != H}, G, c10::elementSize(st), limits);
        pybind11::dict d;
        d["fits"] = p.fits;
        d["why"] = p.why;
        d["blocks"] = p.blocks();
        d["blocks_per_direction"] = p.blocks_per_direction;
        d["units_per_block"] = p.units_per_block;
        d["threads_per_block"] = p.threads_per_block;
        d["row_chunk"] = p.row_chunk;
        d["tile"] = p.forward.tile;
        d["tf32"] = p.forward.tf32;
        for (const auto& [name, pr] : {std::pair{"forward", p.forward}, std::pair{"backward", p.backward}}) {
          const std::string n(name);
          d[(n + "_k_pad").c_str()] = pr.k_pad;
          d[(n + "_n_pad").c_str()] = pr.n_pad;
          d[(n + "_k_chunk").c_str()] = pr.k_chunk;
          d[(n + "_k_splits").c_str()] = pr.k_splits;
        }
        d["forward_shared_bytes"] = p.fits ? p.forward_shared_bytes() : 0;
        d["backward_shared_bytes"] = p.fits ? p.backward_shared_bytes() : 0;
        return d;
      },
      pybind11::arg("D"), pybind11::arg("B"), pybind11::arg("H"), pybind11::arg("P"), pybind11::arg("G"),
      pybind11::arg("dtype"), pybind11::arg("multiprocessors") = 132, pybind11::arg("shared_bytes_per_block") = 232448,
      pybind11::arg("threads_per_block") = fastrnn::persistent::kThreadsPerBlock, pybind11::arg("tile") = 0,
      pybind11::arg("tf32") = false);
}
