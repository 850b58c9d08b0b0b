"""The torch.ops.fastrnn layer ops called directly: gradcheck, opcheck, double backward,
FASTRNN_DEBUG poisoning, and save_for_backward=False.

Shapes (csrc/fastrnn.cpp): x [T, B, I]; w_ih [D, G*H, I]; b_ih [D, G*H]; h0 [D, B, P]; c0 [D, B, H] (LSTM);
w_hh [D, G*H, P]; b_hh [D, G*H]; w_hr [D, P, H] (LSTM with projection, P < H); lengths [B] int64
on the CPU; outputs y [T, B, D*P], hn [D, B, P], cn [D, B, H], workspace [D, T, B, S*H] or [0].
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn  # noqa: F401  (registers the ops)
from fastrnn._ops import GATES, SAVED
from conftest import CELL_KINDS

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
T, B, H, P, I = 3, 3, 3, 2, 2  # small: gradcheck perturbs every input element

LENGTHS = {
    "full": None,
    "sorted": (3, 2, 1),
    "unsorted_with_0": (2, 0, 3),  # a length of 0: that sequence's state passes through untouched
}


def op_of(cell):
    return getattr(torch.ops.fastrnn, f"{cell}_layer")


def backward_op_of(cell):
    return getattr(torch.ops.fastrnn, f"{cell}_layer_backward")


def backward_call(cell, args, grads, y, workspace, need_grad_x=True):
    """The backward op's arguments in schema order: the gradients of the forward's outputs (all but
    the workspace), the forward's inputs but save_for_backward, its y and workspace, need_grad_x."""
    return [*grads, *args.values(), y, workspace, need_grad_x]


def backward_names(cell):
    """Names of the backward op's results, in order."""
    return ["grad_x", "grad_w_ih", "grad_b_ih", "grad_h0"] + (["grad_c0"] if cell == "lstm" else []) + \
        ["grad_w_hh", "grad_b_hh"] + (["grad_w_hr"] if cell == "lstm" else [])


def make_args(cell, D, *, bias=True, proj=False, lengths=None, T=T, B=B, H=H, dtype=torch.float64,
              requires_grad=True, seed=0):
    """Forward arguments of the op for `cell` (without save_for_backward), as a dict in schema order."""
    gen = torch.Generator().manual_seed(seed)
    G = GATES[cell]
    Pp = P if proj else H

    def rand(*shape, scale=1.0):
        t = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)
        return t.requires_grad_(requires_grad)

    args = {"x": rand(T, B, I), "w_ih": rand(D, G * H, I, scale=0.5),
            "b_ih": rand(D, G * H, scale=0.5) if bias else None, "h0": rand(D, B, Pp, scale=0.5)}
    if cell == "lstm":
        args["c0"] = rand(D, B, H, scale=0.5)
    args["w_hh"] = rand(D, G * H, Pp, scale=0.5)
    args["b_hh"] = rand(D, G * H, scale=0.5) if bias else None
    if cell == "lstm":
        args["w_hr"] = rand(D, Pp, H, scale=0.5) if proj else None
    args["lengths"] = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)
    return args


def differentiable(args):
    return [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]


def configs():
    """(cell, D, bias, proj, lengths-name) for every op: D 1 and 2, with and without b_hh, with and
    without w_hr (LSTM), and every kind of lengths."""
    out = []
    for cell in CELLS:
        for D in (1, 2):
            for bias in (True, False):
                for proj in ((False, True) if cell == "lstm" else (False,)):
                    for lengths in LENGTHS:
                        out.append(pytest.param(cell, D, bias, proj, lengths,
                                                id=f"{cell}-D{D}-{'bias' if bias else 'nobias'}"
                                                   f"{'-proj' if proj else ''}-{lengths}"))
    return out


# ----------------------------------------------------------------------------- gradcheck

@pytest.mark.parametrize("cell,D,bias,proj,lengths", configs())
def test_gradcheck(cell, D, bias, proj, lengths):
    args = make_args(cell, D, bias=bias, proj=proj, lengths=LENGTHS[lengths])
    names = differentiable(args)
    op = op_of(cell)

    def fn(*tensors):
        call = dict(args, **dict(zip(names, tensors)))
        outs = op(*call.values(), True)
        return outs[:-1]  # the workspace is an implementation detail, not a differentiable output

    inputs = [args[k] for k in names]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


# ----------------------------------------------------------------------------- opcheck

OPCHECK_CONFIGS = [
    pytest.param(cell, D, bias, proj, lengths, id=f"{cell}-D{D}-{'bias' if bias else 'nobias'}"
                                                 f"{'-proj' if proj else ''}-{lengths}")
    for cell in CELLS
    for (D, bias, proj, lengths) in [(1, True, False, "full"), (2, False, cell == "lstm", "unsorted_with_0"),
                                     (2, True, cell == "lstm", "sorted")]
]


@pytest.mark.parametrize("cell,D,bias,proj,lengths", OPCHECK_CONFIGS)
def test_opcheck_forward(cell, D, bias, proj, lengths):
    args = make_args(cell, D, bias=bias, proj=proj, lengths=LENGTHS[lengths])
    # All four checks (schema, autograd registration, fake tensor, aot_dispatch_dynamic with a
    # backward through the registered autograd formula).
    torch.library.opcheck(op_of(cell), (*args.values(), True))


@pytest.mark.parametrize("cell,D,bias,proj,lengths", OPCHECK_CONFIGS)
def test_opcheck_forward_inference(cell, D, bias, proj, lengths):
    # save_for_backward=False is the inference call (functional.rnn makes it only when nothing
    # needs a gradient), so its inputs do not require grad; all four checks still apply.
    args = make_args(cell, D, bias=bias, proj=proj, lengths=LENGTHS[lengths], requires_grad=False)
    torch.library.opcheck(op_of(cell), (*args.values(), False))


@pytest.mark.parametrize("cell,D,bias,proj,lengths", OPCHECK_CONFIGS)
def test_opcheck_backward(cell, D, bias, proj, lengths):
    args = make_args(cell, D, bias=bias, proj=proj, lengths=LENGTHS[lengths], requires_grad=False)
    outs = op_of(cell)(*args.values(), True)
    y, hn, workspace = outs[0], outs[1], outs[-1]
    gen = torch.Generator().manual_seed(7)
    grads = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in outs[:-1]]
    call = backward_call(cell, args, grads, y, workspace, need_grad_x=D == 1)  # both values of the flag
    # The backward op's own autograd formula deliberately raises (double backward is unsupported,
    # see test_double_backward_raises), so its inputs here do not require grad: then
    # test_aot_dispatch_dynamic checks the op's forward under AOT dispatch, and the other three
    # checks apply unchanged. With inputs requiring grad the aot check would differentiate the
    # backward op and hit that intended error.
    torch.library.opcheck(backward_op_of(cell), tuple(call))


# Double backward (module and op level, kernels and engine): tests/test_workflows.py.


# ----------------------------------------------------------------------------- FASTRNN_DEBUG

DEBUG_LENGTHS = {"full": None, "sorted": (4, 4, 2, 1), "unsorted_with_0": (2, 0, 4, 1)}


def _run_op_and_backward(cell, args, seed=3):
    """Forward and backward op results (all tensors, the workspace included)."""
    fwd = op_of(cell)(*args.values(), True)
    gen = torch.Generator().manual_seed(seed)
    grads = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in fwd[:-1]]
    bwd = backward_op_of(cell)(*backward_call(cell, args, grads, fwd[0], fwd[-1]))
    return fwd, bwd


@pytest.mark.parametrize("lengths", list(DEBUG_LENGTHS))
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("cell", CELLS)
def test_debug_poison_every_output_written(cell, D, lengths, monkeypatch):
    """With FASTRNN_DEBUG=1 the C++ fills every output with NaN before the kernel runs (it reads
    the variable on every call): no NaN left means every element was written."""
    lens = DEBUG_LENGTHS[lengths]
    args = make_args(cell, D, proj=cell == "lstm", lengths=lens, T=4, B=4, H=5, requires_grad=False)
    plain_fwd, plain_bwd = _run_op_and_backward(cell, args)
    monkeypatch.setenv("FASTRNN_DEBUG", "1")
    fwd, bwd = _run_op_and_backward(cell, args)
    names = ["y", "hn", "cn", "workspace"] if cell == "lstm" else ["y", "hn", "workspace"]
    fwd = dict(zip(names, fwd))
    lens_t = torch.full((4,), 4) if lens is None else torch.tensor(lens)
    active = torch.arange(4).view(4, 1) < lens_t.view(1, 4)  # [T, B]
    for name, t in fwd.items():
        if name == "workspace":
            assert t.shape == (D, 4, 4, SAVED[cell] * 5)
            t = t[:, active]  # the rows backward reads: active steps
        assert not torch.isnan(t).any(), f"{cell} {name}: elements left unwritten (NaN) under FASTRNN_DEBUG=1"
    # Outputs past a sequence's length are zero (torch.nn's PackedSequence semantics).
    assert (fwd["y"][~active] == 0).all()
    for name, t in zip(backward_names(cell), bwd):
        assert t.numel() > 0, name
        assert not torch.isnan(t).any(), f"{cell} {name}: elements left unwritten (NaN) under FASTRNN_DEBUG=1"
    # Poisoning changes nothing else: results are bitwise those of a normal run.
    for a, b in zip(list(fwd.values()) + list(bwd), list(plain_fwd) + list(plain_bwd)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_debug_poison_pipelined(cell, monkeypatch):
    """As above, on the pipelined path (2 threads, small steps, T = 40 > one block of 128 / B = 32
    steps): the projection and the weight gradients are computed block by block on a second thread."""
    args = make_args(cell, 2, proj=cell == "lstm", lengths=(40, 33, 0, 31), T=40, B=4, H=5, requires_grad=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        plain_fwd, plain_bwd = _run_op_and_backward(cell, args)
        monkeypatch.setenv("FASTRNN_DEBUG", "1")
        fwd, bwd = _run_op_and_backward(cell, args)
    finally:
        torch.set_num_threads(previous)
    for name, t in zip(backward_names(cell), bwd):
        assert t.numel() > 0, name
        assert not torch.isnan(t).any(), f"{cell} {name}: elements left unwritten (NaN) under FASTRNN_DEBUG=1"
    assert not torch.isnan(fwd[0]).any()
    for a, b in zip(list(fwd[:-1]) + list(bwd), list(plain_fwd[:-1]) + list(plain_bwd)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed_unsorted"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "rnn_relu", "lstm", "lstm_proj", "gru"])
def test_debug_poison_module_gradients(cell, packed, monkeypatch):
    """Whole layers under FASTRNN_DEBUG=1: outputs, states and all gradients are NaN-free."""
    monkeypatch.setenv("FASTRNN_DEBUG", "1")
    kind = CELL_KINDS[cell]
    module = kind.fastrnn_cls(4, 7, num_layers=2, bidirectional=True, dtype=torch.float64, **dict(kind.kwargs))
    x = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    inp = pack_padded_sequence(x, torch.tensor([2, 5, 1]), enforce_sorted=False) if packed else x
    out, hidden = module(inp)
    results = [out.data if packed else out] + list(hidden if isinstance(hidden, tuple) else (hidden,))
    for t in results:
        assert not torch.isnan(t).any()
    loss = sum((t * torch.randn_like(t)).sum() for t in results)
    grads = torch.autograd.grad(loss, [x, *module.parameters()])
    for g in grads:
        assert not torch.isnan(g).any()


# ----------------------------------------------------------------------------- save_for_backward=False

@pytest.mark.parametrize("cell", CELLS)
def test_no_save_for_backward(cell):
    args = make_args(cell, 2, proj=cell == "lstm", lengths=(2, 0, 3))
    saved = op_of(cell)(*args.values(), True)
    unsaved = op_of(cell)(*args.values(), False)
    assert unsaved[-1].shape == (0,), "save_for_backward=False must return an empty [0] workspace"
    assert saved[-1].shape == (2, T, B, SAVED[cell] * H)
    for a, b in zip(unsaved[:-1], saved[:-1]):
        assert torch.equal(a, b), "outputs must not depend on save_for_backward"
    with pytest.raises(RuntimeError, match="save_for_backward=False, so it kept nothing for backward"):
        unsaved[0].sum().backward()


# ----------------------------------------------------------------------------- zero time steps

@pytest.mark.parametrize("cell", CELLS)
def test_zero_time_steps(cell):
    """T = 0 (the modules reject it, the ops accept it): the state passes straight through, forward
    and backward. B=16, H=64 also makes the step big enough for the threaded-slice path."""
    Bz, Hz = 16, 64
    args = make_args(cell, 2, T=0, B=Bz, H=Hz, requires_grad=False)
    outs = op_of(cell)(*args.values(), True)
    y, hn = outs[0], outs[1]
    assert y.shape == (0, Bz, 2 * Hz)
    assert torch.equal(hn, args["h0"])
    if cell == "lstm":
        assert torch.equal(outs[2], args["c0"])
    workspace = outs[-1]
    grad_hn = torch.randn_like(hn)
    grad_cn = torch.randn_like(args["c0"]) if cell == "lstm" else None
    bw = backward_call(cell, args, [torch.zeros_like(y), grad_hn] + ([grad_cn] if cell == "lstm" else []), y,
                       workspace)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        grads = backward_op_of(cell)(*bw)
    finally:
        torch.set_num_threads(previous)
    grads = dict(zip(backward_names(cell), grads))
    assert grads["grad_x"].shape == (0, Bz, I)
    assert torch.equal(grads["grad_h0"], grad_hn)
    if cell == "lstm":
        assert torch.equal(grads["grad_c0"], grad_cn)
    for name in ("grad_w_ih", "grad_b_ih", "grad_w_hh", "grad_b_hh"):
        assert torch.equal(grads[name], torch.zeros_like(args[name[len("grad_"):]])), name
