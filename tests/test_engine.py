"""The device-generic engine (csrc/include/fastrnn/engine.h), which the CUDA ops run, checked on the CPU.

csrc/cpu/engine_cpu.cpp registers it for the CPU as the test-only ops torch.ops.fastrnn_engine_test.*
(the schemas of torch.ops.fastrnn.*). On a machine without a GPU this is what tests its logic: the order
of the steps in each direction, variable lengths (sorted, unsorted, zero), projections, its own
workspace layout between its forward and its backward, every gradient. The oracle is the CPU kernels,
in float64 with the tolerance of conftest.TOLERANCES, with FASTRNN_DEBUG=1 so that both sides start
from NaN-filled outputs and buffers (an element the engine fails to write shows up as NaN).
"""

from __future__ import annotations

import pytest
import torch

import fastrnn  # noqa: F401  (registers the ops)
from conftest import tol
from test_ops import LENGTHS, backward_call, backward_names, configs, make_args


def _engine_op(cell, backward=False, namespace="fastrnn_engine_test"):
    return getattr(getattr(torch.ops, namespace), f"{cell}_layer" + ("_backward" if backward else ""))


def _kernel_op(cell, backward=False):
    return getattr(torch.ops.fastrnn, f"{cell}_layer" + ("_backward" if backward else ""))


def _outputs_and_grads(op, backward_op, cell, args, grads):
    with torch.no_grad():
        outs = op(*args.values(), True)
        *results, workspace = outs
        grad_results = backward_op(*backward_call(cell, args, grads, results[0], workspace))
    return list(results), list(grad_results)


def _check_engine_against_kernels(cell, D, bias, proj, lengths, dtype, T, B, H, namespace="fastrnn_engine_test",
                                  zero_state=False):
    """The engine's ops (or the persistent kernel's emulation: namespace) against the CPU kernels: outputs and
    every gradient. zero_state: h0 (and c0) zero, as a module called without hx passes them."""
    args = make_args(cell, D, bias=bias, proj=proj, lengths=lengths, dtype=dtype, requires_grad=False,
                     T=T, B=B, H=H)
    if zero_state:
        for name in ("h0", "c0"):
            if name in args:
                args[name] = torch.zeros_like(args[name])
    with torch.no_grad():
        y, hn, *_ = _kernel_op(cell)(*args.values(), False)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype),
             torch.randn(hn.shape, generator=gen, dtype=torch.float64).to(dtype)]
    if cell == "lstm":
        grads.append(torch.randn(args["c0"].shape, generator=gen, dtype=torch.float64).to(dtype))
    want_fwd, want_bwd = _outputs_and_grads(_kernel_op(cell), _kernel_op(cell, True), cell, args, grads)
    got_fwd, got_bwd = _outputs_and_grads(_engine_op(cell, namespace=namespace),
                                          _engine_op(cell, True, namespace=namespace), cell, args, grads)
    names = ["y", "hn"] + (["cn"] if cell == "lstm" else []) + backward_names(cell)
    for name, got, want in zip(names, got_fwd + got_bwd, want_fwd + want_bwd):
        assert not got.isnan().any(), f"{name}: unwritten (NaN) elements"
        torch.testing.assert_close(got, want, **tol(dtype), msg=lambda m: f"{cell} D={D} {lengths} {name}: {m}")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell,D,bias,proj,lengths", configs())
def test_engine_matches_cpu_kernels(cell, D, bias, proj, lengths, dtype, monkeypatch):
    monkeypatch.setenv("FASTRNN_DEBUG", "1")
    _check_engine_against_kernels(cell, D, bias, proj, LENGTHS[lengths], dtype, T=5, B=3, H=5)


# Lengths whose steps run different numbers of rows, so that the two directions of a step run different
# numbers (the most of them is multiplied) and some rows have no compact row at some steps.
ROW_LENGTHS = {
    "sorted": (7, 7, 6, 3, 1),
    "unsorted_with_0": (1, 7, 0, 4, 7),
    "all_full": (7, 7, 7, 7, 7),  # lengths given, every row running: the padded rows, nothing gathered
    "one_short": (7, 7, 7, 7, 6),
}


@pytest.mark.parametrize("lengths", ROW_LENGTHS)
@pytest.mark.parametrize("cell,D,proj", [("lstm", 1, False), ("lstm", 2, False), ("lstm", 2, True),
                                         ("lstm", 1, True), ("gru", 1, False), ("gru", 2, False),
                                         ("rnn_tanh", 2, False), ("rnn_relu", 1, False)])
def test_engine_rows_per_step_match_cpu_kernels(cell, D, proj, lengths, monkeypatch):
    monkeypatch.setenv("FASTRNN_DEBUG", "1")
    _check_engine_against_kernels(cell, D, True, proj, ROW_LENGTHS[lengths], torch.float64, T=7, B=5, H=4)


def _matmul_shapes(cell, D, lengths, T=7, B=5):
    """The operands' shapes of each matrix product the engine's forward and backward run, in order, from the
    profiler: {"mm": [(left, right), ...] of aten::mm/addmm, "bmm": [...] of aten::bmm/baddbmm(_)}."""
    args = make_args(cell, D, lengths=lengths, requires_grad=False, T=T, B=B, H=4)
    with torch.no_grad(), torch.profiler.profile(record_shapes=True) as prof:
        y, hn, *rest = _engine_op(cell)(*args.values(), True)
        grads = [torch.ones_like(y), torch.ones_like(hn)] + ([torch.ones_like(rest[0])] if cell == "lstm" else [])
        _engine_op(cell, True)(*backward_call(cell, args, grads, y, rest[-1]))
    first_operand = {"aten::mm": 0, "aten::addmm": 1, "aten::bmm": 0, "aten::baddbmm": 1, "aten::baddbmm_": 1}
    shapes = {"mm": [], "bmm": []}
    for e in prof.events():
        if e.name in first_operand:  # operands in schema order ((self,) left, right), out last
            i = first_operand[e.name]
            shapes["bmm" if "bmm" in e.name else "mm"].append((tuple(e.input_shapes[i]), tuple(e.input_shapes[i + 1])))
    return shapes


@pytest.mark.parametrize("D", [1, 2])
def test_engine_multiplies_only_the_running_rows(D):
    T, B, I, GH = 7, 5, 2, 3 * 4  # GRU, H = 4
    lengths = (7, 6, 3, 1, 0)
    shapes = _matmul_shapes("gru", D, lengths)
    running = [sum(t < n for n in lengths) for t in range(T)]  # [4, 3, 3, 2, 2, 2, 1]
    per_step = [max(running[k], running[T - 1 - k]) if D == 2 else running[k] for k in range(T)]
    real = sum(lengths)
    # forward: the input projection over the real rows, then one product per step over the rows running there
    assert shapes["mm"][0] == ((real, I), (I, D * GH)), shapes
    assert shapes["bmm"][:T] == [((D, n, 4), (D, 4, GH)) for n in per_step], shapes
    # backward: one per step in reverse order, then W_hh's gradient (one bmm), W_ih's and x's over the real rows
    assert shapes["bmm"][T:2 * T] == [((D, n, GH), (D, GH, 4)) for n in per_step[::-1]], shapes
    assert shapes["bmm"][2 * T:] == [((D, GH, real), (D, real, 4))], shapes
    assert shapes["mm"][1:] == [((D * GH, real), (real, I)), ((real, D * GH), (D * GH, I))], shapes
    # without lengths every step multiplies every row
    full = _matmul_shapes("gru", D, None)
    assert [left[1] for left, _ in full["bmm"][:2 * T]] == [B] * 2 * T and full["mm"][0][0] == (T * B, I), full
