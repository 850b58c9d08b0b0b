// The autograd of the layer ops (*_layer), in C++: a torch::autograd::Function per op, registered as the op's
// Autograd kernel (fastrnn.cpp; the engine's test-only namespace in cpu/engine_cpu.cpp).
//
// Why C++: the same formula registered from Python (torch.library.register_autograd) cost a small call ~58 us
// in forward (an LSTM at T = 1, B = 1, H = 64: 86 us against 27 us for the op itself) and more in backward,
// while torch.nn's cells pay a few us for theirs: a cell stepped in a training loop was 0.3-0.6x torch.nn.
//
// What each op saves for backward is what fastrnn/_ops.py saved: the input, the weights and states, y and the
// workspace (under autograd's version check, as torch.nn's); the biases are kept unsaved (backward reads only
// their shapes; torch.nn's composite RNNs save none; fastrnn/functional.py adds the check where torch.nn's
// oneDNN LSTM saves them). With create_graph (grad mode on in backward) the gradient must itself be
// differentiable: backward then calls fastrnn/_ops.py's differentiable_backward (plain PyTorch over
// fastrnn.reference, the same math) instead of the backward op.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

namespace fastrnn {

// fastrnn._ops.differentiable_backward(cell, needs, inputs, grad_outputs), run with the GIL (fastrnn.cpp):
// inputs (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths), undefined where absent; grad_outputs (of y, hn,
// cn), undefined where unused; needs: whether each input needs a gradient. Returns one gradient per input,
// undefined where none is needed.
std::vector<at::Tensor> differentiable_backward_in_python(const std::string& cell, const std::vector<bool>& needs,
                                                          const std::vector<at::Tensor>& inputs,
                                                          const std::vector<at::Tensor>& grad_outputs);

namespace autograd_detail {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

inline at::Tensor or_undefined(const c10::optional<at::Tensor>& t) { return t.has_value() ? *t : at::Tensor(); }
inline c10::optional<at::Tensor> or_none(const at::Tensor& t) {
  return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
}

// Whether each of `args` (undefined: an absent optional tensor, which has no edge) needs a gradient.
inline std::vector<bool> needs_grads(AutogradContext* ctx, const std::vector<at::Tensor>& args) {
  std::vector<bool> needs;
  size_t edge = 0;
  for (const at::Tensor& t : args) {
    needs.push_back(t.defined() && ctx->needs_input_grad(edge));
    if (t.defined()) ++edge;
  }
  return needs;
}

inline void check_saved(AutogradContext* ctx, const std::string& op) {
  TORCH_CHECK(ctx->saved_data["save"].toBool(), op,
              " was called with save_for_backward=False, so it kept nothing for backward; call it with "
              "save_for_backward=True when gradients are needed");
}

// The gradient of an optional argument: undefined where the argument is absent (the op returns empty [0]) or
// needs none.
inline at::Tensor optional_grad(const at::Tensor& g, const at::Tensor& arg, bool needed) {
  return arg.defined() && needed ? g : at::Tensor();
}

// The op's name in `ns`, e.g. "fastrnn::lstm_layer".
inline std::string qualified(const char* ns, const char* op) { return std::string(ns) + "::" + op; }

// The layer ops' C++ signatures (schemas.h), for typed_op.
using Optional = c10::optional<at::Tensor>;
using LstmLayerOp = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const Optional&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const Optional&, const Optional&, const Optional&, bool);
using LstmLayerBackwardOp =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const Optional&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&, const Optional&,
        const Optional&, const at::Tensor&, const at::Tensor&, bool);
using SingleStateLayerOp = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const Optional&, const at::Tensor&, const at::Tensor&, const Optional&,
    const Optional&, bool);
using SingleStateLayerBackwardOp = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const Optional&, const at::Tensor&,
    const at::Tensor&, const Optional&, const Optional&, const at::Tensor&, const at::Tensor&, bool);

// The op `name` ("namespace::op"); each caller looks it up once (a static).
template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const std::string& name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name.c_str(), "").typed<Signature>();
}

// The biases are kept on ctx, not saved (see the opening comment: backward reads only their shapes).
inline void keep_biases(AutogradContext* ctx, const Optional& b_ih, const Optional& b_hh) {
  ctx->saved_data["b_ih"] = b_ih;
  ctx->saved_data["b_hh"] = b_hh;
}
inline std::pair<at::Tensor, at::Tensor> kept_biases(AutogradContext* ctx) {
  return {or_undefined(ctx->saved_data["b_ih"].toOptional<at::Tensor>()),
          or_undefined(ctx->saved_data["b_hh"].toOptional<at::Tensor>())};
}

}  // namespace autograd_detail

// LSTM: (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, save) -> (y, hn, cn, workspace).
template <const char* kNamespace>
struct LstmLayerFunction : public torch::autograd::Function<LstmLayerFunction<kNamespace>> {
  using Tensor = at::Tensor;
  using Optional = c10::optional<at::Tensor>;

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                                                const Tensor& w_ih, const Optional& b_ih, const Tensor& h0,
                                                const Tensor& c0, const Tensor& w_hh, const Optional& b_hh,
                                                const Optional& w_hr, const Optional& lengths, bool save) {
    static const auto op =
        autograd_detail::typed_op<autograd_detail::LstmLayerOp>(autograd_detail::qualified(kNamespace, "lstm_layer"));
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, hn, cn, workspace] = op.call(x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, save);
    ctx->save_for_backward({x, w_ih, h0, c0, w_hh, autograd_detail::or_undefined(w_hr),
                            autograd_detail::or_undefined(lengths), y, workspace});
    autograd_detail::keep_biases(ctx, b_ih, b_hh);
    ctx->saved_data["save"] = save;
    ctx->mark_non_differentiable({workspace});
    ctx->set_materialize_grads(false);
    return {y, hn, cn, workspace};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    using namespace autograd_detail;
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w_ih = saved[1], &h0 = saved[2], &c0 = saved[3], &w_hh = saved[4],
                 &w_hr = saved[5], &lengths = saved[6], &y = saved[7], &workspace = saved[8];
    const auto [b_ih, b_hh] = kept_biases(ctx);
    const std::vector<bool> needs = needs_grads(ctx, {x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths});
    if (at::GradMode::is_enabled()) {  // create_graph=True: the gradient must be differentiable
      variable_list g = differentiable_backward_in_python("lstm", needs, {x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr,
                                                                          lengths}, {grads[0], grads[1], grads[2]});
      g.emplace_back();  // save_for_backward
      return g;
    }
    check_saved(ctx, qualified(kNamespace, "lstm_layer"));
    static const auto backward_op =
        autograd_detail::typed_op<autograd_detail::LstmLayerBackwardOp>(qualified(kNamespace, "lstm_layer_backward"));
    // Gradients of unused outputs are undefined (set_materialize_grads(false): autograd need not fill one as big
    // as the workspace); the op takes zeros.
    const Tensor grad_y = grads[0].defined() ? grads[0] : at::zeros_like(y);
    const Tensor grad_hn = grads[1].defined() ? grads[1] : at::zeros_like(h0);
    const Tensor grad_cn = grads[2].defined() ? grads[2] : at::zeros_like(c0);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [g_x, g_wih, g_bih, g_h0, g_c0, g_whh, g_bhh, g_whr] =
        backward_op.call(grad_y, grad_hn, grad_cn, x, w_ih, or_none(b_ih), h0, c0, w_hh, or_none(b_hh),
                         or_none(w_hr), or_none(lengths), y, workspace, needs[0]);
    return {needs[0] ? g_x : Tensor(), g_wih, optional_grad(g_bih, b_ih, true), g_h0, g_c0, g_whh,
            optional_grad(g_bhh, b_hh, true), optional_grad(g_whr, w_hr, true), Tensor(), Tensor()};
  }
};

// GRU and RNN: (x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save) -> (y, hn, workspace).
template <const char* kNamespace, const char* kCell>
struct SingleStateLayerFunction : public torch::autograd::Function<SingleStateLayerFunction<kNamespace, kCell>> {
  using Tensor = at::Tensor;
  using Optional = c10::optional<at::Tensor>;

  static std::string op_name(const char* suffix) {
    return autograd_detail::qualified(kNamespace, (std::string(kCell) + suffix).c_str());
  }

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                                                const Tensor& w_ih, const Optional& b_ih, const Tensor& h0,
                                                const Tensor& w_hh, const Optional& b_hh, const Optional& lengths,
                                                bool save) {
    static const auto op = autograd_detail::typed_op<autograd_detail::SingleStateLayerOp>(op_name("_layer"));
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, hn, workspace] = op.call(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save);
    ctx->save_for_backward({x, w_ih, h0, w_hh, autograd_detail::or_undefined(lengths), y, workspace});
    autograd_detail::keep_biases(ctx, b_ih, b_hh);
    ctx->saved_data["save"] = save;
    ctx->mark_non_differentiable({workspace});
    ctx->set_materialize_grads(false);
    return {y, hn, workspace};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    using namespace autograd_detail;
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w_ih = saved[1], &h0 = saved[2], &w_hh = saved[3], &lengths = saved[4],
                 &y = saved[5], &workspace = saved[6];
    const auto [b_ih, b_hh] = kept_biases(ctx);
    const std::vector<bool> needs = needs_grads(ctx, {x, w_ih, b_ih, h0, w_hh, b_hh, lengths});
    if (at::GradMode::is_enabled()) {  // create_graph=True: the gradient must be differentiable
      // (the Python side takes LSTM's argument list: no c0, no w_hr)
      const std::vector<bool> lstm_needs = {needs[0], needs[1], needs[2], needs[3], false,
                                            needs[4], needs[5], false,    false};
      variable_list g = differentiable_backward_in_python(
          kCell, lstm_needs, {x, w_ih, b_ih, h0, Tensor(), w_hh, b_hh, Tensor(), lengths},
          {grads[0], grads[1], Tensor()});
      return {g[0], g[1], g[2], g[3], g[5], g[6], Tensor(), Tensor()};
    }
    check_saved(ctx, op_name("_layer"));
    static const auto backward_op =
        autograd_detail::typed_op<autograd_detail::SingleStateLayerBackwardOp>(op_name("_layer_backward"));
    const Tensor grad_y = grads[0].defined() ? grads[0] : at::zeros_like(y);
    const Tensor grad_hn = grads[1].defined() ? grads[1] : at::zeros_like(h0);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [g_x, g_wih, g_bih, g_h0, g_whh, g_bhh] =
        backward_op.call(grad_y, grad_hn, x, w_ih, or_none(b_ih), h0, w_hh, or_none(b_hh), or_none(lengths), y,
                         workspace, needs[0]);
    return {needs[0] ? g_x : Tensor(), g_wih, optional_grad(g_bih, b_ih, true), g_h0, g_whh,
            optional_grad(g_bhh, b_hh, true), Tensor(), Tensor()};
  }
};

inline constexpr char kGru[] = "gru", kRnnTanh[] = "rnn_tanh", kRnnRelu[] = "rnn_relu";
inline constexpr char kLstm[] = "lstm";

// One step of a cell as one autograd node: what a cell module's plain call (fastrnn.cpp plain_cell) runs when a
// gradient is needed. The cell ops (fastrnn.cpp lstm_cell, single_state_cell) compose the same step from views
// and the layer op, which autograd records as the layer op's node plus a view node per argument and output (8
// for an LSTMCell): measured at H = 64, B = 1, 1 thread, an RNNCell training step cost ~27 us more in forward
// and ~35 us more in backward than the layer op called on 3-D leaves, a third of the step. Here the views are
// taken below autograd and the node takes and returns the cell's own shapes. The same kernels and the same
// saved tensors (autograd's version check covers what torch.nn's cells save: x, the states, the weights and
// RNNCell's output; no bias), so the same numbers; with create_graph the gradient is differentiable_backward's.
// Args: x [B, I], h [B, H], c [B, H] (LSTM; nullopt otherwise), w_ih [G*H, I], w_hh [G*H, H], b_ih, b_hh [G*H]
// (optional). Returns h_next (and c_next for LSTM), [B, H].
template <const char* kCell>
struct CellStepFunction : public torch::autograd::Function<CellStepFunction<kCell>> {
  using Tensor = at::Tensor;
  using Optional = c10::optional<at::Tensor>;
  static constexpr bool kLstmCell = kCell == kLstm;
  static constexpr bool kReturnsOutput = kCell == kRnnTanh || kCell == kRnnRelu;  // RNN: y (torch.nn saves it)

  static std::string op_name(const char* suffix) { return std::string("fastrnn::") + kCell + suffix; }
  static Optional unsqueezed(const Optional& t) { return t ? Optional(t->unsqueeze(0)) : c10::nullopt; }

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                                                const Tensor& h, const Optional& c, const Tensor& w_ih,
                                                const Tensor& w_hh, const Optional& b_ih, const Optional& b_hh) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Tensor y, hn, cn, workspace;
    if constexpr (kLstmCell) {
      static const auto op = autograd_detail::typed_op<autograd_detail::LstmLayerOp>("fastrnn::lstm_layer");
      std::tie(y, hn, cn, workspace) = op.call(x.unsqueeze(0), w_ih.unsqueeze(0), unsqueezed(b_ih), h.unsqueeze(0),
                                               c->unsqueeze(0), w_hh.unsqueeze(0), unsqueezed(b_hh), c10::nullopt,
                                               c10::nullopt, true);
    } else {
      static const auto op = autograd_detail::typed_op<autograd_detail::SingleStateLayerOp>(op_name("_layer"));
      std::tie(y, hn, workspace) = op.call(x.unsqueeze(0), w_ih.unsqueeze(0), unsqueezed(b_ih), h.unsqueeze(0),
                                           w_hh.unsqueeze(0), unsqueezed(b_hh), c10::nullopt, true);
    }
    const Tensor h_next = (kReturnsOutput ? y : hn).select(0, 0);
    // RNN: the output itself is saved (autograd's version check then covers the tensor the caller holds);
    // LSTM and GRU: y, which nobody else sees.
    ctx->save_for_backward({x, h, c ? *c : Tensor(), w_ih, w_hh, kReturnsOutput ? h_next : y, workspace});
    autograd_detail::keep_biases(ctx, b_ih, b_hh);
    ctx->set_materialize_grads(false);
    if constexpr (kLstmCell) return {h_next, cn.select(0, 0)};
    return {h_next};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    using namespace autograd_detail;
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &h = saved[1], &c = saved[2], &w_ih = saved[3], &w_hh = saved[4],
                 &saved_y = saved[5], &workspace = saved[6];
    const auto [b_ih, b_hh] = kept_biases(ctx);
    const std::vector<bool> needs = needs_grads(ctx, {x, h, c, w_ih, w_hh, b_ih, b_hh});
    // The layer op's gradients ([1, ...]) back in the cell's shapes.
    // (an absent bias's is empty [0]: none)
    const auto cell_shaped = [](const Tensor& g) { return g.defined() && g.dim() >= 2 ? g.squeeze(0) : Tensor(); };
    const auto layer_shaped = [](const Tensor& t) { return t.defined() ? t.unsqueeze(0) : Tensor(); };
    const Tensor grad_h_next = grads[0], grad_c_next = kLstmCell ? grads[1] : Tensor();
    if (at::GradMode::is_enabled()) {  // create_graph=True: the gradient must be differentiable
      const std::vector<bool> lstm_needs = {needs[0], needs[3], needs[5], needs[1], needs[2],
                                            needs[4], needs[6], false,    false};
      const variable_list g = differentiable_backward_in_python(
          kCell, lstm_needs,
          {layer_shaped(x), layer_shaped(w_ih), layer_shaped(b_ih), layer_shaped(h), layer_shaped(c),
           layer_shaped(w_hh), layer_shaped(b_hh), Tensor(), Tensor()},
          {kReturnsOutput ? layer_shaped(grad_h_next) : Tensor(), kReturnsOutput ? Tensor() : layer_shaped(grad_h_next),
           layer_shaped(grad_c_next)});
      return {cell_shaped(g[0]), cell_shaped(g[3]), cell_shaped(g[4]), cell_shaped(g[1]),
              cell_shaped(g[5]), cell_shaped(g[2]), cell_shaped(g[6])};
    }
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const Tensor x3 = x.unsqueeze(0), h3 = h.unsqueeze(0), w_ih3 = w_ih.unsqueeze(0), w_hh3 = w_hh.unsqueeze(0);
    const Tensor zeros = at::zeros_like(h3);
    const Tensor grad_state = grad_h_next.defined() ? grad_h_next.unsqueeze(0) : zeros;
    const Optional b_ih3 = b_ih.defined() ? Optional(b_ih.unsqueeze(0)) : c10::nullopt;
    const Optional b_hh3 = b_hh.defined() ? Optional(b_hh.unsqueeze(0)) : c10::nullopt;
    Tensor g_x, g_wih, g_bih, g_h, g_c, g_whh, g_bhh;
    if constexpr (kLstmCell) {
      static const auto backward_op =
          autograd_detail::typed_op<autograd_detail::LstmLayerBackwardOp>("fastrnn::lstm_layer_backward");
      const Tensor grad_c = grad_c_next.defined() ? grad_c_next.unsqueeze(0) : zeros;
      Tensor g_whr;
      std::tie(g_x, g_wih, g_bih, g_h, g_c, g_whh, g_bhh, g_whr) =
          backward_op.call(zeros, grad_state, grad_c, x3, w_ih3, b_ih3, h3, c.unsqueeze(0), w_hh3, b_hh3,
                           c10::nullopt, c10::nullopt, saved_y, workspace, needs[0]);
    } else {
      static const auto backward_op =
          autograd_detail::typed_op<autograd_detail::SingleStateLayerBackwardOp>(op_name("_layer_backward"));
      const Tensor y3 = kReturnsOutput ? saved_y.unsqueeze(0) : saved_y;
      std::tie(g_x, g_wih, g_bih, g_h, g_whh, g_bhh) =
          backward_op.call(kReturnsOutput ? grad_state : zeros, kReturnsOutput ? zeros : grad_state, x3, w_ih3, b_ih3,
                           h3, w_hh3, b_hh3, c10::nullopt, y3, workspace, needs[0]);
    }
    const auto needed = [&](const Tensor& g, size_t i) { return needs[i] ? cell_shaped(g) : Tensor(); };
    return {needed(g_x, 0), needed(g_h, 1), needed(g_c, 2), needed(g_wih, 3),
            needed(g_whh, 4), needed(g_bih, 5), needed(g_bhh, 6)};
  }
};


template <const char* kNamespace>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> lstm_layer_autograd(
    const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0,
    const at::Tensor& c0, const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh,
    const c10::optional<at::Tensor>& w_hr, const c10::optional<at::Tensor>& lengths, bool save) {
  auto out = LstmLayerFunction<kNamespace>::apply(x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, save);
  return {out[0], out[1], out[2], out[3]};
}

template <const char* kNamespace, const char* kCell>
std::tuple<at::Tensor, at::Tensor, at::Tensor> single_state_layer_autograd(
    const at::Tensor& x, const at::Tensor& w_ih, const c10::optional<at::Tensor>& b_ih, const at::Tensor& h0,
    const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& lengths,
    bool save) {
  auto out = SingleStateLayerFunction<kNamespace, kCell>::apply(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save);
  return {out[0], out[1], out[2]};
}

// m: a TORCH_LIBRARY_IMPL(<kNamespace>, Autograd, m) block.
template <const char* kNamespace>
void register_layer_autograd(torch::Library& m) {
  m.impl("lstm_layer", &lstm_layer_autograd<kNamespace>);
  m.impl("gru_layer", &single_state_layer_autograd<kNamespace, kGru>);
  m.impl("rnn_tanh_layer", &single_state_layer_autograd<kNamespace, kRnnTanh>);
  m.impl("rnn_relu_layer", &single_state_layer_autograd<kNamespace, kRnnRelu>);
}

}  // namespace fastrnn
