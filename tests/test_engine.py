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


def _engine_op(cell, backward=False):
    return getattr(torch.ops.fastrnn_engine_test, f"{cell}_layer" + ("_backward" if backward else ""))


def _kernel_op(cell, backward=False):
    return getattr(torch.ops.fastrnn, f"{cell}_layer" + ("_backward" if backward else ""))


def _outputs_and_grads(op, backward_op, cell, args, grads):
    with torch.no_grad():
        outs = op(*args.values(), True)
        *results, workspace = outs
        grad_results = backward_op(*backward_call(cell, args, grads, results[0], workspace))
    return list(results), list(grad_results)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cell,D,bias,proj,lengths", configs())
def test_engine_matches_cpu_kernels(cell, D, bias, proj, lengths, dtype, monkeypatch):
    monkeypatch.setenv("FASTRNN_DEBUG", "1")
    args = make_args(cell, D, bias=bias, proj=proj, lengths=LENGTHS[lengths], dtype=dtype, requires_grad=False,
                     T=5, B=3, H=5)
    with torch.no_grad():
        y, hn, *_ = _kernel_op(cell)(*args.values(), False)
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(y.shape, generator=gen, dtype=torch.float64).to(dtype),
             torch.randn(hn.shape, generator=gen, dtype=torch.float64).to(dtype)]
    if cell == "lstm":
        grads.append(torch.randn(args["c0"].shape, generator=gen, dtype=torch.float64).to(dtype))
    want_fwd, want_bwd = _outputs_and_grads(_kernel_op(cell), _kernel_op(cell, True), cell, args, grads)
    got_fwd, got_bwd = _outputs_and_grads(_engine_op(cell), _engine_op(cell, True), cell, args, grads)
    names = ["y", "hn"] + (["cn"] if cell == "lstm" else []) + backward_names(cell)
    for name, got, want in zip(names, got_fwd + got_bwd, want_fwd + want_bwd):
        assert not got.isnan().any(), f"{name}: unwritten (NaN) elements"
        torch.testing.assert_close(got, want, **tol(dtype), msg=lambda m: f"{cell} D={D} {lengths} {name}: {m}")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_engine_zero_batch_and_bad_input(cell):
    args = make_args(cell, 1, requires_grad=False, B=0)
    args["lengths"] = None
    outs = _engine_op(cell)(*args.values(), True)
    assert outs[0].shape == (3, 0, 3)
    bad = make_args(cell, 1, requires_grad=False)
    bad["lengths"] = torch.tensor([4, 1, 1])  # longer than T = 3
    with pytest.raises(RuntimeError, match=r"lengths\[0\] must be in \[0, 3\] but got 4"):
        _engine_op(cell)(*bad.values(), True)
