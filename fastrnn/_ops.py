"""Fake (meta) kernels for every fastrnn op, and the Python half of the layer ops' autograd.

The schemas live in csrc/include/fastrnn/schemas.h. One op runs one layer over the whole sequence for
D = 1 or 2 directions; see csrc/fastrnn.cpp for shapes. Fake kernels never branch on the device: CPU
and CUDA return the same shapes, the workspace included.

The layer ops' autograd is C++ (csrc/include/fastrnn/autograd.h: the same formula from Python cost a small
call ~58 us in forward). Double backward (a gradient of a gradient, create_graph=True): when autograd asks for
a graph of the gradient, that backward calls differentiable_backward below, which differentiates
fastrnn.reference.layer (plain PyTorch, the same math) at the saved inputs instead of running the backward
kernel, so the gradient is itself differentiable to any order, on every device. The first-order path
(create_graph=False) is the kernels'.

Each *_layer op has a twin, *_layer_no_grad: the same kernels and fake, and a C++ autograd kernel that refuses
gradients (csrc/include/fastrnn/schemas.h), for the calls that need none (fastrnn.functional chooses).

The same is registered for the test-only ops of the device-generic engine (namespace fastrnn_engine_test,
csrc/cpu/engine_cpu.cpp) and for those of the persistent kernel's CPU emulation (fastrnn_persistent_test,
csrc/cpu/persistent_emulation.cpp), so that both CUDA paths are tested on the CPU too.
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


def differentiable_backward(cell, needs, inputs, grad_outputs):
    """The gradients of a layer op's inputs as differentiable functions of those inputs and of `grad_outputs` (for
    create_graph=True): the vector-Jacobian product of fastrnn.reference.layer, taken with a graph. Called by the
    ops' C++ autograd (csrc/include/fastrnn/autograd.h).

    inputs: (x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths), None where absent (c0 and w_hr but for LSTM);
    needs: whether each needs a gradient; grad_outputs: the gradients of (y, hn, cn), None where unused. Returns
    one gradient per input (None where not needed)."""
    wanted = [i for i, t in enumerate(inputs) if needs[i] and t is not None]
    with torch.enable_grad():
        outputs = reference.layer(cell, *inputs)
        used = [(o, g) for o, g in zip(outputs, grad_outputs) if o is not None and g is not None]
        grads = torch.autograd.grad([o for o, _ in used], [inputs[i] for i in wanted], [g for _, g in used],
                                    create_graph=True, allow_unused=True)
    result = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        result[i] = g if g is not None else torch.zeros_like(inputs[i])
    return result


def register(namespace: str) -> None:
    """Fake kernels for every op of `namespace` (fastrnn, or the engine's test-only library), and the backward
    ops' refusal to be differentiated. The layer ops' autograd is C++ (csrc/include/fastrnn/autograd.h)."""
    torch.library.register_fake(f"{namespace}::lstm_layer")(_lstm_layer_fake)
    torch.library.register_fake(f"{namespace}::lstm_layer_no_grad")(_lstm_layer_fake)
    torch.library.register_fake(f"{namespace}::lstm_layer_backward")(_lstm_layer_backward_fake)
    torch.library.register_autograd(f"{namespace}::lstm_layer_backward", _backward_op_is_not_differentiable)
    for cell in ("gru", "rnn_tanh", "rnn_relu"):
        _register_single_state(namespace, cell)


def _register_single_state(namespace, cell):
    """GRU and RNN ops share one signature: (x, w_ih, b_ih, h0, w_hh, b_hh, lengths, save) -> (y, hn, workspace)."""
    op = f"{cell}_layer"

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

    torch.library.register_fake(f"{namespace}::{op}")(fake)
    torch.library.register_fake(f"{namespace}::{op}_no_grad")(fake)
    torch.library.register_fake(f"{namespace}::{op}_backward")(fake_backward)
    torch.library.register_autograd(f"{namespace}::{op}_backward", _backward_op_is_not_differentiable)


register("fastrnn")
register("fastrnn_engine_test")
register("fastrnn_persistent_test")
