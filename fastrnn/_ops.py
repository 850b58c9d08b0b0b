"""Fake (meta) kernels and autograd for every fastrnn op.

The schemas live in csrc/fastrnn.cpp. One op runs one layer over the whole sequence for
D = 1 or 2 directions; see there for shapes. Fake kernels never branch on the device: CPU
and CUDA return the same shapes, the workspace included.

Double backward (a gradient of a gradient, create_graph=True): when autograd asks for a graph of the
gradient, the backward differentiates fastrnn.reference.layer (plain PyTorch, the same math) at the saved
inputs instead of running the backward kernel, so the gradient is itself differentiable to any order, on
every device. The first-order path (create_graph=False) is the kernels' and is unchanged.

Each *_layer op has a twin, *_layer_no_grad: the same kernels and fake, and a C++ autograd kernel that refuses
gradients (csrc/include/fastrnn/schemas.h), for the calls that need none: the Python autograd formula's
dispatch cost a small call ~11 us (fastrnn.functional chooses between them).

The same autograd is registered for the test-only ops of the device-generic engine (namespace
fastrnn_engine_test, csrc/cpu/engine_cpu.cpp), so the engine's path is tested on the CPU too.
"""

from __future__ import annotations

import torch

from . import reference

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


def _lstm_layer_fake(x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, save_for_backward):
    y, hn, workspace, H = _fake_outputs("lstm", x, w_ih, w_hh, save_for_backward)
    return y, hn, x.new_empty(w_ih.shape[0], x.shape[1], H), workspace


def _like(t):
    """A fake result shaped like t, contiguous as the kernels return it (torch.empty_like would copy t's strides:
    a transposed x, batch_first's, then gave compiled graphs a grad_x of strides the kernel does not produce)."""
    return t.new_empty(t.shape)


def _fake_input_grads(x, w_ih, b_ih, need_grad_x):
    """Fake grad_x, grad_w_ih, grad_b_ih: empty [0] where the op computes nothing."""
    return (_like(x) if need_grad_x else x.new_empty(0), _like(w_ih),
            _like(b_ih) if b_ih is not None else x.new_empty(0))


def _lstm_layer_backward_fake(grad_y, grad_hn, grad_cn, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, y,
                              workspace, need_grad_x):
    return (
        *_fake_input_grads(x, w_ih, b_ih, need_grad_x),
        _like(h0),
        _like(c0),
        _like(w_hh),
        _like(b_hh) if b_hh is not None else y.new_empty(0),
        _like(w_hr) if w_hr is not None else y.new_empty(0),
    )


def _backward_op_is_not_differentiable(ctx, *grads):
    # Unreachable from fastrnn's own autograd: with create_graph the layer op's backward differentiates the
    # reference instead of calling this op. Reached only by differentiating a direct call of the op.
    raise RuntimeError(
        "fastrnn: the *_layer_backward ops have no derivative of their own; differentiate the layer op "
        "(torch.autograd.grad(..., create_graph=True)), whose gradient is differentiable"
    )


def _grads_or_zeros(grads, likes):
    """Autograd's gradients of the op's outputs, zeros (shaped like `likes`: y, and h0/c0 for hn/cn) for those
    unused. Gradients are not materialised (set_materialize_grads(False)), which spares autograd filling one
    for the workspace, as big as the forward's activations."""
    return [g if g is not None else torch.zeros_like(o) for g, o in zip(grads, likes)]


def _optional_grad(g, arg):
    """The gradient of an optional argument: None where the argument was None (the op then returns empty [0])."""
    return g if arg is not None else None


def _check_saved(ctx, op):
    if not ctx.saved:
        raise RuntimeError(
            f"fastrnn::{op} was called with save_for_backward=False, so it kept nothing for backward; "
            "call it with save_for_backward=True when gradients are needed"
        )


def _differentiable_backward(cell, ctx, inputs, grad_outputs):
    """The gradients of the op's inputs as differentiable functions of those inputs and of `grad_outputs`
    (for create_graph=True): the vector-Jacobian product of fastrnn.reference.layer, taken with a graph.

    inputs: (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths), c0 and w_hr None without them; grad_outputs:
    the gradients of (y, hn, cn), None where unused. Returns one gradient per input (None where not needed)."""
    needs = ctx.needs_input_grad
    # The op's input positions: (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, save) for LSTM,
    # (x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save) otherwise.
    positions = (0, 1, 2, 3, 4, 5, 6, 7) if cell == "lstm" else (0, 1, 2, 3, None, 4, 5, None)
    wanted = [i for i, pos in enumerate(positions)
              if pos is not None and needs[pos] and inputs[i] is not None]
    with torch.enable_grad():
        outputs = reference.layer(cell, *inputs)
        used = [(o, g) for o, g in zip(outputs, grad_outputs) if o is not None and g is not None]
        grads = torch.autograd.grad([o for o, _ in used], [inputs[i] for i in wanted], [g for _, g in used],
                                    create_graph=True, allow_unused=True)
    result = [None] * len(positions)
    for i, g in zip(wanted, grads):
        result[i] = g if g is not None else torch.zeros_like(inputs[i])
    return [r for r, pos in zip(result, positions) if pos is not None]


# _NOT_SAVED: the biases are kept on ctx, not saved for backward, so autograd's version check does not cover
# them: an in-place edit of a bias between forward and backward runs, as it does in torch.nn (its composite
# RNNs save no bias: a sum's gradient needs none). The first-order backward reads only their shapes; the
# differentiable one (create_graph) their values. Where torch.nn's oneDNN LSTM does save them,
# fastrnn.functional.rnn adds the check (_SavedForVersionCheck).


def register(namespace: str) -> None:
    """Fake kernels and autograd for every op of `namespace` (fastrnn, or the engine's test-only library)."""
    ops = getattr(torch.ops, namespace)
    lstm_backward_op = ops.lstm_layer_backward

    def lstm_setup_context(ctx, inputs, output):
        x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, save_for_backward = inputs
        y, _, _, workspace = output
        ctx.save_for_backward(x, w_ih, h0, c0, w_hh, w_hr, lengths, y, workspace)
        ctx.biases = b_ih, b_hh  # (not saved: see _NOT_SAVED)
        ctx.saved = save_for_backward
        ctx.set_materialize_grads(False)

    def lstm_backward(ctx, grad_y, grad_hn, grad_cn, grad_workspace):
        x, w_ih, h0, c0, w_hh, w_hr, lengths, y, workspace = ctx.saved_tensors
        b_ih, b_hh = ctx.biases
        if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable
            g = _differentiable_backward("lstm", ctx, (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths),
                                         (grad_y, grad_hn, grad_cn))
            return (*g, None, None)
        _check_saved(ctx, "lstm_layer")
        grad_y, grad_hn, grad_cn = _grads_or_zeros((grad_y, grad_hn, grad_cn), (y, h0, c0))
        g_x, g_wih, g_bih, g_h0, g_c0, g_whh, g_bhh, g_whr = lstm_backward_op(
            grad_y, grad_hn, grad_cn, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, y, workspace,
            ctx.needs_input_grad[0]
        )
        return (g_x if ctx.needs_input_grad[0] else None, g_wih, _optional_grad(g_bih, b_ih), g_h0, g_c0, g_whh,
                _optional_grad(g_bhh, b_hh), _optional_grad(g_whr, w_hr), None, None)

    torch.library.register_fake(f"{namespace}::lstm_layer")(_lstm_layer_fake)
    torch.library.register_fake(f"{namespace}::lstm_layer_no_grad")(_lstm_layer_fake)
    torch.library.register_fake(f"{namespace}::lstm_layer_backward")(_lstm_layer_backward_fake)
    torch.library.register_autograd(f"{namespace}::lstm_layer", lstm_backward, setup_context=lstm_setup_context)
    torch.library.register_autograd(f"{namespace}::lstm_layer_backward", _backward_op_is_not_differentiable)
    for cell in ("gru", "rnn_tanh", "rnn_relu"):
        _register_single_state(namespace, cell)


def _register_single_state(namespace, cell):
    """GRU and RNN ops share one signature: (x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save) -> (y, hn, workspace)."""
    op = f"{cell}_layer"
    backward_op = getattr(getattr(torch.ops, namespace), f"{cell}_layer_backward")

    def fake(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save_for_backward):
        y, hn, workspace, _ = _fake_outputs(cell, x, w_ih, w_hh, save_for_backward)
        return y, hn, workspace

    def fake_backward(grad_y, grad_hn, x, w_ih, b_ih, h0, w_hh, b_hh, lengths, y, workspace, need_grad_x):
        return (
            *_fake_input_grads(x, w_ih, b_ih, need_grad_x),
            _like(h0),
            _like(w_hh),
            _like(b_hh) if b_hh is not None else y.new_empty(0),
        )

    def setup_context(ctx, inputs, output):
        x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save_for_backward = inputs
        y, _, workspace = output
        ctx.save_for_backward(x, w_ih, h0, w_hh, lengths, y, workspace)
        ctx.biases = b_ih, b_hh  # (not saved: see _NOT_SAVED)
        ctx.saved = save_for_backward
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_y, grad_hn, grad_workspace):
        x, w_ih, h0, w_hh, lengths, y, workspace = ctx.saved_tensors
        b_ih, b_hh = ctx.biases
        if torch.is_grad_enabled():  # create_graph=True: the gradient must be differentiable
            g = _differentiable_backward(cell, ctx, (x, w_ih, b_ih, h0, None, w_hh, b_hh, None, lengths),
                                         (grad_y, grad_hn, None))
            return (*g, None, None)
        _check_saved(ctx, op)
        grad_y, grad_hn = _grads_or_zeros((grad_y, grad_hn), (y, h0))
        g_x, g_wih, g_bih, g_h0, g_whh, g_bhh = backward_op(grad_y, grad_hn, x, w_ih, b_ih, h0, w_hh, b_hh, lengths,
                                                            y, workspace, ctx.needs_input_grad[0])
        return (g_x if ctx.needs_input_grad[0] else None, g_wih, _optional_grad(g_bih, b_ih), g_h0, g_whh,
                _optional_grad(g_bhh, b_hh), None, None)

    torch.library.register_fake(f"{namespace}::{op}")(fake)
    torch.library.register_fake(f"{namespace}::{op}_no_grad")(fake)
    torch.library.register_fake(f"{namespace}::{op}_backward")(fake_backward)
    torch.library.register_autograd(f"{namespace}::{op}", backward, setup_context=setup_context)
    torch.library.register_autograd(f"{namespace}::{op}_backward", _backward_op_is_not_differentiable)


register("fastrnn")
register("fastrnn_engine_test")
