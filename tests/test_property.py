"""Property test: fastrnn's kernels equal fastrnn.reference (float64) on random configurations.

Hypothesis draws the cell, layers, directions, bias, proj_size, sizes, padded or packed input with
random lengths (sorted or not) and whether hx is given. The reference is itself checked against
torch.nn in test_parity.py (the two-level oracle). Profiles ("ci": derandomized, 25 examples;
"dev") are registered in conftest.py; the deadline is set here explicitly.
"""

from __future__ import annotations

import datetime

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from conftest import assert_results_close, force_reference, init_parameters, outputs_and_grads

CELLS = {"rnn_tanh": (fastrnn.RNN, {"nonlinearity": "tanh"}), "rnn_relu": (fastrnn.RNN, {"nonlinearity": "relu"}),
         "lstm": (fastrnn.LSTM, {}), "gru": (fastrnn.GRU, {})}


@st.composite
def configs(draw):
    cell = draw(st.sampled_from(sorted(CELLS)))
    H = draw(st.integers(1, 9))
    proj = draw(st.integers(0, H - 1)) if cell == "lstm" and H > 1 else 0  # torch needs 0 <= proj < H
    T = draw(st.integers(1, 6))
    B = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["padded", "packed"]))
    lengths = None
    if kind == "packed":
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
        lengths[draw(st.integers(0, B - 1))] = T  # the padded tensor's T is the longest length
    return dict(
        cell=cell, H=H, proj=proj, T=T, B=B, kind=kind, lengths=lengths,
        I=draw(st.integers(1, 6)),
        num_layers=draw(st.integers(1, 2)),
        bidirectional=draw(st.booleans()),
        bias=draw(st.booleans()),
        batch_first=draw(st.booleans()),
        enforce_sorted=draw(st.booleans()) if kind == "packed" else None,
        hx=draw(st.booleans()),
        seed=draw(st.integers(0, 2 ** 16)),
    )


def _results(module, c, use_reference):
    gen = torch.Generator().manual_seed(c["seed"])
    T, B, I = c["T"], c["B"], c["I"]
    shape = (B, T, I) if c["batch_first"] else (T, B, I)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).requires_grad_()
    leaves = {"input": x}
    inp = x
    if c["kind"] == "packed":
        lengths = torch.tensor(c["lengths"])
        if c["enforce_sorted"]:
            lengths = lengths.sort(descending=True).values
        inp = pack_padded_sequence(x, lengths, batch_first=c["batch_first"], enforce_sorted=c["enforce_sorted"])
    hx = None
    if c["hx"]:
        LD = c["num_layers"] * (2 if c["bidirectional"] else 1)
        P = c["proj"] or c["H"]
        h0 = torch.randn(LD, B, P, generator=gen, dtype=torch.float64).requires_grad_()
        leaves["h0"] = h0
        hx = h0
        if c["cell"] == "lstm":
            c0 = torch.randn(LD, B, c["H"], generator=gen, dtype=torch.float64).requires_grad_()
            leaves["c0"] = c0
            hx = (h0, c0)
    if use_reference:
        with force_reference():
            return outputs_and_grads(module, inp, hx, leaves)
    return outputs_and_grads(module, inp, hx, leaves)


# Explicit deadline: one example takes well under 0.5 s (the reference's Python loop dominates);
# 10 s only catches a hang or a pathological slowdown, never a slow CI runner's ordinary jitter.
@settings(deadline=datetime.timedelta(seconds=10))
@given(configs())
def test_kernels_match_reference(c):
    cls, kw = CELLS[c["cell"]]
    if c["proj"]:
        kw = dict(kw, proj_size=c["proj"])
    module = cls(c["I"], c["H"], num_layers=c["num_layers"], bidirectional=c["bidirectional"], bias=c["bias"],
                 batch_first=c["batch_first"], dtype=torch.float64, **kw)
    init_parameters(module, c["seed"])
    expected = _results(module, c, use_reference=True)
    actual = _results(module, c, use_reference=False)
    assert_results_close(actual, expected, dtype=torch.float64, what=f"kernels vs reference {c}")
