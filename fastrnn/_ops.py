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


def _fake_outputs(cell, x_proj, w_hh, save_for_backward):
    D, T, B, GH = x_proj.shape
    H = GH // GATES[cell]
    P = w_hh.shape[2]
    y = x_proj.new_empty(T, B, D * P)
    hn = x_proj.new_empty(D, B, P)
    workspace = x_proj.new_empty(D, T, B, SAVED[cell] * H) if save_for_backward else x_proj.new_empty(0)
    return y, hn, workspace, H


@torch.library.register_fake("fastrnn::lstm_layer")
def _lstm_layer_fake(x_proj, h0, c0, w_hh, b_hh, w_hr, lengths, save_for_backward):
    y, hn, workspace, H = _fake_outputs("lstm", x_proj, w_hh, save_for_backward)
    return y, hn, x_proj.new_empty(x_proj.shape[0], x_proj.shape[2], H), workspace


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


def _lstm_setup_context(ctx, inputs, output):
    x_proj, h0, c0, w_hh, b_hh, w_hr, lengths, save_for_backward = inputs
    y, _, _, workspace = output
    ctx.save_for_backward(h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace)
    ctx.saved = save_for_backward


def _check_saved(ctx, op):
    if not ctx.saved:
        raise RuntimeError(
            f"fastrnn::{op} was called with save_for_backward=False, so it kept nothing for backward; "
            "call it with save_for_backward=True when gradients are needed"
        )


def _lstm_backward(ctx, grad_y, grad_hn, grad_cn, grad_workspace):
    _check_saved(ctx, "lstm_layer")
    h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace = ctx.saved_tensors
    g_x, g_h0, g_c0, g_whh, g_bhh, g_whr = torch.ops.fastrnn.lstm_layer_backward(
        grad_y, grad_hn, grad_cn, h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace
    )
    return (g_x, g_h0, g_c0, g_whh, g_bhh if b_hh is not None else None, g_whr if w_hr is not None else None,
            None, None)


torch.library.register_autograd("fastrnn::lstm_layer", _lstm_backward, setup_context=_lstm_setup_context)
torch.library.register_autograd("fastrnn::lstm_layer_backward", _no_double_backward)


def _register_single_state(cell):
    """GRU and RNN ops share one signature: (x_proj, h0, w_hh, b_hh, lengths, save) -> (y, hn, workspace)."""
    op = f"{cell}_layer"
    backward_op = getattr(torch.ops.fastrnn, f"{cell}_layer_backward")

    def fake(x_proj, h0, w_hh, b_hh, lengths, save_for_backward):
        y, hn, workspace, _ = _fake_outputs(cell, x_proj, w_hh, save_for_backward)
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
        x_proj, h0, w_hh, b_hh, lengths, save_for_backward = inputs
        y, _, workspace = output
        ctx.save_for_backward(h0, w_hh, b_hh, lengths, y, workspace)
        ctx.saved = save_for_backward

    def backward(ctx, grad_y, grad_hn, grad_workspace):
        _check_saved(ctx, op)
        h0, w_hh, b_hh, lengths, y, workspace = ctx.saved_tensors
        g_x, g_h0, g_whh, g_bhh = backward_op(grad_y, grad_hn, h0, w_hh, b_hh, lengths, y, workspace)
        return g_x, g_h0, g_whh, g_bhh if b_hh is not None else None, None, None

    torch.library.register_fake(f"fastrnn::{op}")(fake)
    torch.library.register_fake(f"fastrnn::{op}_backward")(fake_backward)
    torch.library.register_autograd(f"fastrnn::{op}", backward, setup_context=setup_context)
    torch.library.register_autograd(f"fastrnn::{op}_backward", _no_double_backward)


for _cell in ("gru", "rnn_tanh", "rnn_relu"):
    _register_single_state(_cell)
