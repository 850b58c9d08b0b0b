"""In-place edits between forward and backward: fastrnn raises where torch.nn raises, and runs where it runs.

autograd raises "...modified by an inplace operation" at backward for an edited tensor that was saved
for backward. Which ones torch.nn saves depends on its path (fastrnn.functional.
torch_nn_saves_output_and_biases): the input, the states and every weight always; the biases and the
output only in its oneDNN LSTM; its RNNCell saves its output. For every parameter, the input, each
state and each output, of layers and cells, fastrnn must do as torch.nn does, and where both run, give
torch.nn's gradients (those of the values before the edit: nothing that was edited is read).
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn

LAYER_CONFIGS = [
    ("LSTM", {}), ("LSTM", {"bidirectional": True}), ("LSTM", {"proj_size": 2}), ("LSTM", {"bias": False}),
    ("LSTM", {"num_layers": 2}), ("LSTM", {"batch_first": True}), ("LSTM", {"packed": True}),
    ("LSTM", {"bidirectional": True, "packed": True}), ("LSTM", {"dtype": torch.float64}),
    ("GRU", {}), ("GRU", {"bidirectional": True}), ("GRU", {"num_layers": 2, "bias": False}),
    ("GRU", {"batch_first": True}), ("GRU", {"packed": True}),
    ("RNN", {}), ("RNN", {"bidirectional": True, "nonlinearity": "relu"}), ("RNN", {"packed": True}),
]
CELL_CONFIGS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {}), ("RNNCell", {"nonlinearity": "relu"}),
                ("GRUCell", {"bias": False}), ("RNNCell", {"dtype": torch.float64})]


def _targets(cls_name, kwargs):
    probe = getattr(nn, cls_name)(3, 4, **{k: v for k, v in kwargs.items() if k not in ("packed", "dtype")})
    is_lstm = cls_name.startswith("LSTM")
    is_cell = cls_name.endswith("Cell")
    outputs = (2 if is_lstm else 1) if is_cell else (3 if is_lstm else 2)
    return (["input", "h0"] + (["c0"] if is_lstm else []) + [n for n, _ in probe.named_parameters()]
            + [f"output {i}" for i in range(outputs)])


def _run(lib, cls_name, kwargs, target):
    """Forward, edit `target` in place (times 2), backward: 'raises' or the gradients."""
    kwargs = dict(kwargs)
    packed, dtype = kwargs.pop("packed", False), kwargs.pop("dtype", torch.float32)
    is_cell, is_lstm = cls_name.endswith("Cell"), cls_name.startswith("LSTM")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = getattr(lib, cls_name)(3, 4, dtype=dtype, **kwargs)
    torch.manual_seed(1)
    if is_cell:
        x = torch.randn(2, 3, dtype=dtype, requires_grad=True)
        h = torch.randn(2, 4, dtype=dtype, requires_grad=True)
        c = torch.randn(2, 4, dtype=dtype, requires_grad=True)
    else:
        D = 2 if kwargs.get("bidirectional") else 1
        L, P = kwargs.get("num_layers", 1), kwargs.get("proj_size", 0) or 4
        x = torch.randn(2, 5, 3, dtype=dtype, requires_grad=True)
        if not kwargs.get("batch_first"):
            x = x.detach().transpose(0, 1).contiguous().requires_grad_()
        h = torch.randn(L * D, 2, P, dtype=dtype, requires_grad=True)
        c = torch.randn(L * D, 2, 4, dtype=dtype, requires_grad=True)
    edited = {"input": x * 1, "h0": h * 1, "c0": c * 1}  # (non-leaf copies: editable in place)
    inp = edited["input"]
    if packed:
        inp = pack_padded_sequence(inp, [5, 3], batch_first=kwargs.get("batch_first", False))
        edited["input"] = inp.data
    hx = (edited["h0"], edited["c0"]) if is_lstm else edited["h0"]
    out = m(inp, hx)
    if is_cell:
        outs = list(out) if is_lstm else [out]
    else:
        outs = [out[0].data if packed else out[0]] + (list(out[1]) if is_lstm else [out[1]])
    loss = sum((o * torch.arange(1, o.numel() + 1, dtype=dtype).view(o.shape)).sum() for o in outs)
    with torch.no_grad():
        if target.startswith("output"):
            outs[int(target.split()[1])].mul_(2)
        elif target in edited:
            edited[target].mul_(2)
        else:
            getattr(m, target).mul_(2)
    leaves = [x, h] + ([c] if is_lstm else []) + list(m.parameters())
    try:
        return torch.autograd.grad(loss, leaves)
    except RuntimeError as e:
        # autograd's two errors: a saved tensor's version changed, or a view of one that was unbound (torch.nn's
        # composite path unbinds hx) was edited
        assert re.search(r"modified by an inplace operation|modified inplace", str(e)), e
        return "raises"


def _cases(configs):
    for cls_name, kwargs in configs:
        for target in _targets(cls_name, kwargs):
            label = ",".join(f"{k}={v}" for k, v in kwargs.items()) or "default"
            yield pytest.param(cls_name, kwargs, target, id=f"{cls_name}-{label}-{target}".replace(" ", "_"))


@pytest.mark.parametrize("cls_name, kwargs, target", list(_cases(LAYER_CONFIGS)) + list(_cases(CELL_CONFIGS)))
def test_in_place_edit_is_caught_as_torch_nn_catches_it(cls_name, kwargs, target):
    expected, actual = _run(nn, cls_name, kwargs, target), _run(fastrnn, cls_name, kwargs, target)
    if isinstance(expected, str) or isinstance(actual, str):
        what = lambda r: r if isinstance(r, str) else "runs"  # noqa: E731
        assert what(actual) == what(expected), f"torch.nn {what(expected)}, fastrnn {what(actual)}"
        return
    dtype = kwargs.get("dtype", torch.float32)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, **tol)


def test_every_kind_of_target_is_covered_both_ways():
    """The cases include, for torch.nn, edits that raise and edits that run, of biases and of outputs."""
    outcomes = {}
    for cls_name, kwargs in LAYER_CONFIGS[:3] + [("GRU", {}), ("RNNCell", {})]:
        for target in ("bias_ih_l0", "output 0", "bias_ih"):
            if target in _targets(cls_name, kwargs):
                outcomes.setdefault(target.split("_l0")[0], set()).add(
                    _run(nn, cls_name, kwargs, target) == "raises")
    assert outcomes["bias_ih"] == {True, False} and outcomes["output 0"] == {True, False}, outcomes
