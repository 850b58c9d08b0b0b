"""Fake (meta) kernels and autograd for every fastrnn op.

The schemas live in csrc/fastrnn.cpp. One op runs one layer over the whole sequence for
D = 1 or 2 directions; see there for shapes. Fake kernels never branch on the device: CPU
and CUDA return the same shapes, the workspace included.

Double backward is not supported (as with cuDNN): asking for it raises a RuntimeError
instead of silently returning a wrong result.
"""

from __future__ import annotations

import torch

# Workspace values saved per hidden unit and step, and gates, per cell (see csrc/cpu/*.cpp).
SAVED = {"lstm": 5, "gru": 4, "rnn_tanh": 0, "rnn_relu": 0}
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
CELLS = tuple(SAVED)


def _fake_outputs(cell, x, w_ih, w_hh, save_for_backward):
    T, B, _ = x.shape
    D, GH, _ = w_ih.shape
    H = GH // GATES[cell]
    P = w_hh.shape[2]
    y = x.new_empty(T, B, D * P)
    hn = x.new_empty(D, B, P)
    workspace = x.new_empty(D, T, B, SAVED[cell] * H) if save_for_backward else x.new_empty(0)
    return y, hn, workspace, H


@torch.library.register_fake("fastrnn::lstm_layer")
def _lstm_layer_fake(x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, save_for_backward):
    y, hn, workspace, H = _fake_outputs("lstm", x, w_ih, w_hh, save_for_backward)
    return y, hn, x.new_empty(w_ih.shape[0], x.shape[1], H), workspace


def _fake_input_grads(x, w_ih, b_ih, need_grad_x):
    """Fake grad_x, grad_w_ih, grad_b_ih: empty [0] where the op computes nothing."""
    return (torch.empty_like(x) if need_grad_x else x.new_empty(0), torch.empty_like(w_ih),
            torch.empty_like(b_ih) if b_ih is not None else x.new_empty(0))


@torch.library.register_fake("fastrnn::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_y, grad_hn, grad_cn, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, y,
                              workspace, need_grad_x):
    return (
        *_fake_input_grads(x, w_ih, b_ih, need_grad_x),
        torch.empty_like(h0),
        torch.empty_like(c0),
        torch.empty_like(w_hh),
        torch.empty_like(b_hh) if b_hh is not None else y.new_empty(0),
        torch.empty_like(w_hr) if w_hr is not None else y.new_empty(0),
    )


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "fastrnn: double backward (a gradient of a gradient, e.g. create_graph=True followed by another "
        "backward) is not supported by fastrnn's kernels; use torch.nn or fastrnn.reference for it"
    )


def _grads_or_zeros(grads, likes):
    """Autograd's gradients of the op's outputs, zeros (shaped like `likes`: y, and h0/c0 for hn/cn) for those
    unused. Gradients are not materialised (set_materialize_grads(False)), which spares autograd filling one
    for the workspace, as big as the forward's activations."""
    return [g if g is not None else torch.zeros_like(o) for g, o in zip(grads, likes)]


def _optional_grad(g, arg):
    """The gradient of an optional argument: None where the argument was None (the op then returns empty [0])."""
    return g if arg is not None else None


def _lstm_setup_context(ctx, inputs, output):
    x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, save_for_backward = inputs
    y, _, _, workspace = output
    ctx.save_for_backward(x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace)
    ctx.saved = save_for_backward
    ctx.set_materialize_grads(False)


def _check_saved(ctx, op):
    if not ctx.saved:
        raise RuntimeError(
            f"fastrnn::{op} was called with save_for_backward=False, so it kept nothing for backward; "
            "call it with save_for_backward=True when gradients are needed"
        )


def _lstm_backward(ctx, grad_y, grad_hn, grad_cn, grad_workspace):
    _check_saved(ctx, "lstm_layer")
    x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace = ctx.saved_tensors
    grad_y, grad_hn, grad_cn = _grads_or_zeros((grad_y, grad_hn, grad_cn), (y, h0, c0))
    g_x, g_wih, g_bih, g_h0, g_c0, g_whh, g_bhh, g_whr = torch.ops.fastrnn.lstm_layer_backward(
        grad_y, grad_hn, grad_cn, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace,
        ctx.needs_input_grad[0]
    )
    return (g_x if ctx.needs_input_grad[0] else None, g_wih, _optional_grad(g_bih, b_ih), g_h0, g_c0, g_whh,
            _optional_grad(g_bhh, b_hh), _optional_grad(g_whr, w_hr), None, None)


torch.library.register_autograd("fastrnn::lstm_layer", _lstm_backward, setup_context=_lstm_setup_context)
torch.library.register_autograd("fastrnn::lstm_layer_backward", _no_double_backward)


def _register_single_state(cell):
    """GRU and RNN ops share one signature: (x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save) -> (y, hn, workspace)."""
    op = f"{cell}_layer"
    backward_op = getattr(torch.ops.fastrnn, f"{cell}_layer_backward")

    def fake(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save_for_backward):
        y, hn, workspace, _ = _fake_outputs(cell, x, w_ih, w_hh, save_for_backward)
        return y, hn, workspace

    def fake_backward(grad_y, grad_hn, x, w_ih, b_ih, h0, w_hh, b_hh, lengths, y, workspace, need_grad_x):
        return (
            *_fake_input_grads(x, w_ih, b_ih, need_grad_x),
            torch.empty_like(h0),
            torch.empty_like(w_hh),
            torch.empty_like(b_hh) if b_hh is not None else y.new_empty(0),
        )

    def setup_context(ctx, inputs, output):
        x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save_for_backward = inputs
        y, _, workspace = output
        ctx.save_for_backward(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, y, workspace)
        ctx.saved = save_for_backward
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y, grad_hn, grad_workspace):
        _check_saved(ctx, op)
        x, w_ih, b_ih, h0, w_hh, b_hh, lengths, y, workspace = ctx.saved_tensors
        grad_y, grad_hn = _grads_or_zeros((grad_y, grad_hn), (y, h0))
        g_x, g_wih, g_bih, g_h0, g_whh, g_bhh = backward_op(grad_y, grad_hn, x, w_ih, b_ih, h0, w_hh, b_hh, lengths,
                                                            y, workspace, ctx.needs_input_grad[0])
        return (g_x if ctx.needs_input_grad[0] else None, g_wih, _optional_grad(g_bih, b_ih), g_h0, g_whh,
                _optional_grad(g_bhh, b_hh), None, None)

    torch.library.register_fake(f"fastrnn::{op}")(fake)
    torch.library.register_fake(f"fastrnn::{op}_backward")(fake_backward)
    torch.library.register_autograd(f"fastrnn::{op}", backward, setup_context=setup_context)
    torch.library.register_autograd(f"fastrnn::{op}_backward", _no_double_backward)


for _cell in ("gru", "rnn_tanh", "rnn_relu"):
    _register_single_state(_cell)
