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

// One layer, one direction, as one autograd node on the module's own tensors: what a cell module's plain call
// (fastrnn.cpp plain_cell) and a one-layer, one-direction layer's plain call (fastrnn.cpp one_direction_layer) run
// when a gradient is needed. Called through the layer op's own autograd instead, the weights must first be made
// [1, ...] views, and autograd records a view node per argument and output besides the op's (8 for an LSTMCell):
// measured at H = 64, B = 1, 1 thread, an RNNCell training step cost ~27 us more in forward and ~35 us more in
// backward than the layer op called on 3-D leaves, a third of the step. Here the views are taken below autograd.
// The same kernels and the same saved tensors (autograd's version check covers what torch.nn saves: the input, the
// states, the weights; the output where torch.nn saves it; the biases only where it saves them), so the same
// numbers; with create_graph the gradient is differentiable_backward's, as for the layer ops.
// kCellShaped: x [B, I], h and c [B, H] (c: LSTM only, else nullopt); returns h_next (and c_next), [B, H]; RNN's
// h_next is its output, which torch.nn's RNNCell saves. Otherwise x [T, B, I], h and c [1, B, H]; returns y
// [T, B, H] (a copy of the op's y unless output_saved) and hn (and cn), [1, B, H]. w_ih [G*H, I], w_hh [G*H, H],
// b_ih, b_hh [G*H] (optional).
template <const char* kCell, bool kCellShaped>
struct OneDirectionFunction : public torch::autograd::Function<OneDirectionFunction<kCell, kCellShaped>> {
  using Tensor = at::Tensor;
  using Optional = c10::optional<at::Tensor>;
  static constexpr bool kLstmCell = kCell == kLstm;
  static constexpr bool kRnn = kCell == kRnnTanh || kCell == kRnnRelu;

  static std::string op_name(const char* suffix) { return std::string("fastrnn::") + kCell + suffix; }
  static Optional unsqueezed(const Optional& t) { return t ? Optional(t->unsqueeze(0)) : c10::nullopt; }
  // x, h, c as the layer op takes them.
  static Tensor layer_shaped(const Tensor& t) { return kCellShaped && t.defined() ? t.unsqueeze(0) : t; }

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const Tensor& x,
                                                const Tensor& h, const Optional& c, const Tensor& w_ih,
                                                const Tensor& w_hh, const Optional& b_ih, const Optional& b_hh,
                                                bool output_saved, bool biases_saved) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    Tensor y, hn, cn, workspace;
    if constexpr (kLstmCell) {
      static const auto op = autograd_detail::typed_op<autograd_detail::LstmLayerOp>("fastrnn::lstm_layer");
      std::tie(y, hn, cn, workspace) =
          op.call(layer_shaped(x), w_ih.unsqueeze(0), unsqueezed(b_ih), layer_shaped(h), layer_shaped(*c),
                  w_hh.unsqueeze(0), unsqueezed(b_hh), c10::nullopt, c10::nullopt, true);
    } else {
      static const auto op = autograd_detail::typed_op<autograd_detail::SingleStateLayerOp>(op_name("_layer"));
      std::tie(y, hn, workspace) = op.call(layer_shaped(x), w_ih.unsqueeze(0), unsqueezed(b_ih), layer_shaped(h),
                                           w_hh.unsqueeze(0), unsqueezed(b_hh), c10::nullopt, true);
    }
    torch::autograd::variable_list outputs;
    Tensor saved_y = y;  // what backward reads as y: the op's, or the output handed out when that is saved
    if constexpr (kCellShaped) {
      outputs = {(kRnn ? y : hn).select(0, 0)};
      if (kRnn) saved_y = outputs[0];
      if (kLstmCell) outputs.push_back(cn.select(0, 0));
    } else {
      outputs = {output_saved ? y : y.clone(), hn};
      if (output_saved) saved_y = outputs[0];
      if (kLstmCell) outputs.push_back(cn);
    }
    std::vector<Tensor> to_save = {x, h, c ? *c : Tensor(), w_ih, w_hh, saved_y, workspace};
    if (biases_saved) {  // (only for autograd's version check: backward reads their shapes from ctx)
      to_save.push_back(b_ih ? *b_ih : Tensor());
      to_save.push_back(b_hh ? *b_hh : Tensor());
    }
    ctx->save_for_backward(to_save);
    autograd_detail::keep_biases(ctx, b_ih, b_hh);
    ctx->set_materialize_grads(false);
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    using namespace autograd_detail;
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &h = saved[1], &c = saved[2], &w_ih = saved[3], &w_hh = saved[4],
                 &saved_y = saved[5], &workspace = saved[6];
    const auto [b_ih, b_hh] = kept_biases(ctx);
    const std::vector<bool> needs = needs_grads(ctx, {x, h, c, w_ih, w_hh, b_ih, b_hh});
    // The gradients of the op's outputs (y, hn, cn), as the module's outputs carry them.
    Tensor grad_y, grad_hn, grad_cn;
    if constexpr (kCellShaped) {
      (kRnn ? grad_y : grad_hn) = layer_shaped(grads[0]);
      if (kLstmCell) grad_cn = layer_shaped(grads[1]);
    } else {
      grad_y = grads[0];
      grad_hn = grads[1];
      if (kLstmCell) grad_cn = grads[2];
    }
    // The layer op's gradients back in the module's shapes: the weights' are [1, ...]; an absent bias's is empty
    // [0] (none); x's, h's and c's are the module's, but a cell's.
    const auto weight_shaped = [](const Tensor& g) { return g.defined() && g.dim() >= 2 ? g.squeeze(0) : Tensor(); };
    const auto state_shaped = [](const Tensor& g) { return kCellShaped && g.defined() ? g.squeeze(0) : g; };
    if (at::GradMode::is_enabled()) {  // create_graph=True: the gradient must be differentiable
      const std::vector<bool> lstm_needs = {needs[0], needs[3], needs[5], needs[1], needs[2],
                                            needs[4], needs[6], false,    false};
      const variable_list g = differentiable_backward_in_python(
          kCell, lstm_needs,
          {layer_shaped(x), w_ih.unsqueeze(0), or_undefined(unsqueezed(or_none(b_ih))), layer_shaped(h),
           layer_shaped(c), w_hh.unsqueeze(0), or_undefined(unsqueezed(or_none(b_hh))), Tensor(), Tensor()},
          {grad_y, grad_hn, grad_cn});
      return {state_shaped(g[0]), state_shaped(g[3]), state_shaped(g[4]), weight_shaped(g[1]),
              weight_shaped(g[5]), weight_shaped(g[2]), weight_shaped(g[6]), Tensor(), Tensor()};
    }
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const Tensor x3 = layer_shaped(x), h3 = layer_shaped(h), w_ih3 = w_ih.unsqueeze(0), w_hh3 = w_hh.unsqueeze(0);
    const Tensor y3 = kCellShaped && kRnn ? saved_y.unsqueeze(0) : saved_y;
    const auto or_zeros = [](const Tensor& g, const Tensor& like) { return g.defined() ? g : at::zeros_like(like); };
    const Optional b_ih3 = unsqueezed(or_none(b_ih)), b_hh3 = unsqueezed(or_none(b_hh));
    Tensor g_x, g_wih, g_bih, g_h, g_c, g_whh, g_bhh;
    if constexpr (kLstmCell) {
      static const auto backward_op = typed_op<LstmLayerBackwardOp>("fastrnn::lstm_layer_backward");
      Tensor g_whr;
      const Tensor c3 = layer_shaped(c);
      std::tie(g_x, g_wih, g_bih, g_h, g_c, g_whh, g_bhh, g_whr) =
          backward_op.call(or_zeros(grad_y, y3), or_zeros(grad_hn, h3), or_zeros(grad_cn, c3), x3, w_ih3, b_ih3, h3,
                           c3, w_hh3, b_hh3, c10::nullopt, c10::nullopt, y3, workspace, needs[0]);
    } else {
      static const auto backward_op = typed_op<SingleStateLayerBackwardOp>(op_name("_layer_backward"));
      std::tie(g_x, g_wih, g_bih, g_h, g_whh, g_bhh) =
          backward_op.call(or_zeros(grad_y, y3), or_zeros(grad_hn, h3), x3, w_ih3, b_ih3, h3, w_hh3, b_hh3,
                           c10::nullopt, y3, workspace, needs[0]);
    }
    const auto needed = [&](const Tensor& g, size_t i) { return needs[i] ? g : Tensor(); };
    return {needed(state_shaped(g_x), 0), needed(state_shaped(g_h), 1),    needed(state_shaped(g_c), 2),
            needed(weight_shaped(g_wih), 3), needed(weight_shaped(g_whh), 4), needed(weight_shaped(g_bih), 5),
            needed(weight_shaped(g_bhh), 6), Tensor(), Tensor()};
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
