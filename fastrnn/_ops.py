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


@torch.library.register_fake("fastrnn::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace):
    D, _, B, _ = workspace.shape
    T = y.shape[0]
    GH = w_hh.shape[1]
    return (
        y.new_empty(D, T, B, GH),
        torch.empty_like(h0),
        torch.empty_like(c0),
        torch.empty_like(w_hh),
        y.new_empty(b_hh.shape) if b_hh is not None else y.new_empty(0),
        y.new_empty(w_hr.shape) if w_hr is not None else y.new_empty(0),
    )


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "fastrnn: double backward (a gradient of a gradient, e.g. create_graph=True followed by another "
        "backward) is not supported by fastrnn's kernels; use torch.nn or fastrnn.reference for it"
    )


def _input_grads(ctx, x, w_ih, b_ih, grad_x_proj):
    """The gradients of x [T, B, I], w_ih [D, G*H, I] and b_ih [D, G*H] (those asked for; the op's first three
    inputs) from that of their projection x_proj = W_ih x + b_ih, grad_x_proj [D, T, B, G*H]: one GEMM each."""
    D, T, B, GH = grad_x_proj.shape
    g = grad_x_proj.reshape(D, T * B, GH)
    x2d = x.reshape(T * B, x.shape[2])
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x = None
    if need_x:  # sum over directions of g[d] @ w_ih[d], accumulated in place (no [D, T*B, I] temporary)
        grad_x = torch.mm(g[0], w_ih[0])
        for d in range(1, D):
            grad_x.addmm_(g[d], w_ih[d])
        grad_x = grad_x.view(T, B, x.shape[2])
    grad_w = None
    if need_w:
        per_direction = [torch.mm(g[d].t(), x2d) for d in range(D)]
        grad_w = per_direction[0].unsqueeze(0) if D == 1 else torch.stack(per_direction)
    grad_b = g.sum(1) if need_b and b_ih is not None else None
    return grad_x, grad_w, grad_b


def _lstm_setup_context(ctx, inputs, output):
    x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, save_for_backward = inputs
    y, _, _, workspace = output
    ctx.save_for_backward(x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace)
    ctx.saved = save_for_backward


def _check_saved(ctx, op):
    if not ctx.saved:
        raise RuntimeError(
            f"fastrnn::{op} was called with save_for_backward=False, so it kept nothing for backward; "
            "call it with save_for_backward=True when gradients are needed"
        )


def _lstm_backward(ctx, grad_y, grad_hn, grad_cn, grad_workspace):
    _check_saved(ctx, "lstm_layer")
    x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace = ctx.saved_tensors
    g_xp, g_h0, g_c0, g_whh, g_bhh, g_whr = torch.ops.fastrnn.lstm_layer_backward(
        grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace
    )
    return (*_input_grads(ctx, x, w_ih, b_ih, g_xp), g_h0, g_c0, g_whh, g_bhh if b_hh is not None else None,
            g_whr if w_hr is not None else None, None, None)


torch.library.register_autograd("fastrnn::lstm_layer", _lstm_backward, setup_context=_lstm_setup_context)
torch.library.register_autograd("fastrnn::lstm_layer_backward", _no_double_backward)


def _register_single_state(cell):
    """GRU and RNN ops share one signature: (x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save) -> (y, hn, workspace)."""
    op = f"{cell}_layer"
    backward_op = getattr(torch.ops.fastrnn, f"{cell}_layer_backward")

    def fake(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save_for_backward):
        y, hn, workspace, _ = _fake_outputs(cell, x, w_ih, w_hh, save_for_backward)
        return y, hn, workspace

    def fake_backward(grad_y, grad_hn, h0, w_hh, b_hh, lengths, y, workspace):
        D, GH = w_hh.shape[0], w_hh.shape[1]
        T, B = y.shape[0], y.shape[1]
        return (
            y.new_empty(D, T, B, GH),
            torch.empty_like(h0),
            torch.empty_like(w_hh),
            y.new_empty(b_hh.shape) if b_hh is not None else y.new_empty(0),
        )

    def setup_context(ctx, inputs, output):
        x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save_for_backward = inputs
        y, _, workspace = output
        ctx.save_for_backward(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, y, workspace)
        ctx.saved = save_for_backward

    def backward(ctx, grad_y, grad_hn, grad_workspace):
        _check_saved(ctx, op)
        x, w_ih, b_ih, h0, w_hh, b_hh, lengths, y, workspace = ctx.saved_tensors
        g_xp, g_h0, g_whh, g_bhh = backward_op(grad_y, grad_hn, h0, w_hh, b_hh, lengths, y, workspace)
        return (*_input_grads(ctx, x, w_ih, b_ih, g_xp), g_h0, g_whh, g_bhh if b_hh is not None else None, None,
                None)

    torch.library.register_fake(f"fastrnn::{op}")(fake)
    torch.library.register_fake(f"fastrnn::{op}_backward")(fake_backward)
    torch.library.register_autograd(f"fastrnn::{op}", backward, setup_context=setup_context)
    torch.library.register_autograd(f"fastrnn::{op}_backward", _no_double_backward)


for _cell in ("gru", "rnn_tanh", "rnn_relu"):
    _register_single_state(_cell)
