"""Saturated gates through the recurrence: the fixed points and zero gradients torch.nn has.

A sigmoid or tanh that stops one ulp short of 1 (1 - 2^-24, AVX2's reciprocal estimate with one Newton
step) is a biased fixed point: an open forget gate (LSTM) or update gate (GRU) then leaks the state a
little every step, and a saturated unit keeps a derivative of ~6e-8 that huge inputs turn into huge
gradients. torch.nn's float32 keeps the state bit-exactly and gives exactly zero gradients there.
(tests/test_activations.py checks the activations themselves, at every capability.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastrnn

DTYPES = (torch.float32, torch.float64)


def _pair(mode, dtype, **kwargs):
    reference = getattr(nn, mode)(1, 4, dtype=dtype, **kwargs)
    twin = getattr(fastrnn, mode)(1, 4, dtype=dtype, **kwargs)
    return reference, twin


@pytest.mark.parametrize("dtype", DTYPES)
def test_open_forget_gate_keeps_the_cell_state_exactly(dtype):
    """LSTM: input gate shut, forget gate open, 10^5 steps: c stays 1.0 bit for bit, as in torch.nn."""
    reference, twin = _pair("LSTM", dtype)
    x = torch.zeros(100_000, 1, 1, dtype=dtype)
    hx = (torch.zeros(1, 1, 4, dtype=dtype), torch.ones(1, 1, 4, dtype=dtype))
    results = []
    with torch.no_grad():
        for m in (reference, twin):
            for p in m.parameters():
                p.zero_()
            m.bias_ih_l0[:4] = -100  # input gate i = sigmoid(-100): 0
            m.bias_ih_l0[4:8] = 100  # forget gate f = sigmoid(100): 1
            results.append(m(x, hx)[1][1])
    assert torch.equal(results[0], torch.ones_like(results[0])), results[0]  # (torch.nn: the fixed point)
    assert torch.equal(results[1], results[0]), results[1]


@pytest.mark.parametrize("dtype", DTYPES)
def test_open_update_gate_keeps_the_hidden_state_exactly(dtype):
    """GRU: update gate z = sigmoid(100) = 1, candidate n = tanh(0) = 0, 10^5 steps: h stays h0 bit for bit, as in
    torch.nn (h' = (1 - z) n + z h; torch.nn: n + z (h - n))."""
    reference, twin = _pair("GRU", dtype)
    torch.manual_seed(0)
    x = torch.randn(100_000, 1, 1, dtype=dtype)
    h0 = torch.randn(1, 1, 4, dtype=dtype)
    results = []
    with torch.no_grad():
        for m in (reference, twin):
            for p in m.parameters():
                p.zero_()
            m.bias_ih_l0[4:8] = 100
            results.append(m(x, h0)[1])
    assert torch.equal(results[0], h0)  # (torch.nn: the fixed point)
    assert torch.equal(results[1], results[0]), (results[1] - results[0])


@pytest.mark.parametrize("scale", (1e30, 1e35, 3e38))
@pytest.mark.parametrize("mode", ("RNN", "LSTM", "GRU"))
def test_huge_inputs_give_torch_nns_zero_gradients(mode, scale):
    """Pre-activations of +-1e30 and more saturate every gate: the gradient of weight_ih is exactly torch.nn's
    (zero where the gates are saturated; a gate's derivative of 6e-8 times 1e30 used to give 1e23)."""
    torch.manual_seed(0)
    reference, twin = _pair(mode, torch.float32)
    twin.load_state_dict(reference.state_dict())
    x = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0]).view(5, 1, 1) * scale
    grads = []
    for m in (reference, twin):
        out, _ = m(x)
        grads.append(torch.autograd.grad(out.sum(), m.weight_ih_l0)[0])
    assert torch.equal(grads[1], grads[0]), (grads[1], grads[0])
