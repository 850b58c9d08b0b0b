"""One case in one mode, for each implementation: the models, the step that is timed, the correctness check.

Implementations (IMPLS), all holding the same weights (copied from the torch.nn model) and inputs:

* torch:     torch.nn (cuDNN on a GPU; oneDNN for LSTM, per-step ATen ops for GRU/RNN on the CPU);
* fastrnn:   fastrnn's twin module (load_state_dict), its compiled kernels;
* reference: fastrnn.reference.rnn, the readable pure-PyTorch loop, on the torch.nn model's weights;
* compiled:  the same reference under torch.compile (compiling takes about a minute per shape on a CPU).

`Workload.run()` is the unit that is both checked and timed:

* inference: the forward under torch.no_grad(), model in eval mode;
* training:  forward, then backward of output.sum() + the final hidden (and cell) states' sums,
             producing the gradients of the input and of every parameter.

`Workload.reset()` (not timed) drops the previous run's gradients (set_to_none).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

import fastrnn
from fastrnn import reference

from .configs import Case

IMPLS = ("fastrnn", "torch", "reference", "compiled")
BASELINE = "torch"

_TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}
_FASTRNN = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn_tanh": fastrnn.RNN, "rnn_relu": fastrnn.RNN}
_MODE = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU"}

# Largest accepted error, relative to the scale of the torch.nn result:
# max|impl - torch| / max(1, max|torch|), for each compared tensor. A sanity check before timing
# against gross errors (a wrong gate, a missed step), not a precision test (the tests hold those rules):
# ~1000 units in the last place for float32, ~100 for float16 and TF32 (10-bit mantissas: fp32 on CUDA
# where torch's TF32 flags allow it), ~64 for bfloat16 (8 bits).
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 1e-1, torch.bfloat16: 5e-1, "tf32": 1e-1}


class ReferenceRNN(nn.Module):
    """fastrnn.reference.rnn on a copy of a torch.nn RNN/LSTM/GRU's parameters (same names and values)."""

    def __init__(self, torch_model: nn.RNNBase, mode: str):
        super().__init__()
        self.inner = copy.deepcopy(torch_model)
        self.mode = mode

    def forward(self, x: Tensor, hx):
        m = self.inner
        weights = [getattr(m, name) for name in m._flat_weights_names]
        return reference.rnn(self.mode, x, hx, weights, m.bias, m.num_layers, m.dropout, self.training,
                             m.bidirectional, m.batch_first, None, m.proj_size > 0)


class Workload:
    """One implementation of one case in one mode."""

    def __init__(self, model: nn.Module, params: dict[str, Tensor], x: Tensor, hx, mode: str):
        self.model, self.params, self.x, self.hx, self.mode = model, params, x, hx, mode
        model.train(mode == "training")
        x.requires_grad_(mode == "training")

    def reset(self) -> None:
        for p in self.params.values():
            p.grad = None
        self.x.grad = None

    def run(self) -> dict[str, Tensor]:
        """One step; returns every result the correctness check compares, by name."""
        if self.mode == "inference":
            with torch.no_grad():
                output, hidden = self.model(self.x, self.hx)
            return _named_outputs(output, hidden)
        output, hidden = self.model(self.x, self.hx)
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        loss = output.sum() + sum(s.sum() for s in states)
        loss.backward()
        results = _named_outputs(output, hidden)
        results["grad input"] = self.x.grad
        for name, p in self.params.items():
            results[f"grad {name}"] = p.grad
        return results


def _named_outputs(output: Tensor, hidden) -> dict[str, Tensor]:
    if isinstance(hidden, tuple):
        return {"output": output, "h_n": hidden[0], "c_n": hidden[1]}
    return {"output": output, "h_n": hidden}


def make_models(case: Case, impls, device="cpu", dtype=torch.float32, seed: int = 0) -> dict[str, tuple]:
    """{impl: (module, its parameters by torch.nn's names)} for `case`, all with the torch.nn model's weights."""
    torch.manual_seed(seed)
    kwargs = dict(num_layers=case.layers, bidirectional=case.bidir, device=device, dtype=dtype)
    if case.cell.startswith("rnn_"):
        kwargs["nonlinearity"] = case.cell.removeprefix("rnn_")
    ref = _TORCH[case.cell](case.I, case.H, **kwargs)
    models = {}
    for impl in impls:
        if impl == "torch":
            models[impl] = (ref, dict(ref.named_parameters()))
        elif impl == "fastrnn":
            fast = _FASTRNN[case.cell](case.I, case.H, **kwargs)
            fast.load_state_dict(ref.state_dict())
            models[impl] = (fast, dict(fast.named_parameters()))
        elif impl in ("reference", "compiled"):
            loop = ReferenceRNN(ref, _MODE[case.cell])
            module = torch.compile(loop) if impl == "compiled" else loop
            models[impl] = (module, dict(loop.inner.named_parameters()))
        else:
            raise ValueError(f"unknown implementation {impl!r}; expected one of {', '.join(IMPLS)}")
    return models


def make_workloads(case: Case, mode: str, impls, device="cpu", dtype=torch.float32, seed: int = 0,
                   models: dict[str, tuple] | None = None) -> dict[str, Workload]:
    """{impl: Workload} for `case` in `mode`: same weights, same inputs (each its own copy).

    `models` (as make_models returns, for these impls) lets a caller supply its own implementation."""
    models = make_models(case, impls, device, dtype, seed) if models is None else models
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(case.T, case.B, case.I, generator=generator, dtype=dtype).to(device)
    state_shape = (case.layers * case.D, case.B, case.H)
    h0 = torch.randn(state_shape, generator=generator, dtype=dtype).to(device)
    c0 = torch.randn(state_shape, generator=generator, dtype=dtype).to(device) if case.cell == "lstm" else None

    def hx():
        return (h0.clone(), c0.clone()) if c0 is not None else h0.clone()

    return {impl: Workload(module, params, x.clone(), hx(), mode) for impl, (module, params) in models.items()}


def compare(expected: dict[str, Tensor], actual: dict[str, Tensor]) -> tuple[float, str]:
    """The largest scaled error over all results, max|actual - expected| / max(1, max|expected|), and where.

    A missing result, a shape mismatch or a NaN counts as an infinite error.
    """
    worst, where = 0.0, ""
    for name, want in expected.items():
        got = actual.get(name)
        if got is None or got.shape != want.shape:
            got_shape = None if got is None else tuple(got.shape)
            return float("inf"), f"{name} (expected shape {tuple(want.shape)}, got {got_shape})"
        scale = max(1.0, want.abs().max().item())
        error = (got.double() - want.double()).abs().max().item() / scale
        if error != error:
            return float("inf"), f"{name} (NaN)"
        if error >= worst:
            worst, where = error, name
    return worst, where
