"""One case in one mode, for each implementation: the models, the step that is timed, the correctness check.

`make_pair` builds a torch.nn model and its fastrnn twin holding the same weights (copied with
load_state_dict) and the same inputs. `Workload.run()` is the unit that is both checked and timed:

* inference: the forward under torch.no_grad(), model in eval mode;
* training:  forward, then backward of output.sum() + the final hidden (and cell) states' sums,
             producing the gradients of the input and of every parameter.

`Workload.reset()` (not timed) drops the previous run's gradients (set_to_none).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import fastrnn

from .configs import Case

_TORCH = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}
_FASTRNN = {"lstm": fastrnn.LSTM, "gru": fastrnn.GRU, "rnn_tanh": fastrnn.RNN, "rnn_relu": fastrnn.RNN}

# Largest accepted error, relative to the scale of the torch.nn result:
# max|fastrnn - torch| / max(1, max|torch|), for each compared tensor. A sanity check before timing
# against gross errors (a wrong gate, a missed step), not a precision test (the tests hold those rules):
# ~1000 units in the last place for float32, ~100 for float16 and TF32 (10-bit mantissas: fp32 on CUDA
# where torch's TF32 flags allow it), ~64 for bfloat16 (8 bits).
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10, torch.float16: 1e-1, torch.bfloat16: 5e-1, "tf32": 1e-1}


class Workload:
    """One implementation of one case in one mode."""

    def __init__(self, model: nn.Module, x: Tensor, hx, mode: str):
        self.model, self.x, self.hx, self.mode = model, x, hx, mode
        model.train(mode == "training")
        x.requires_grad_(mode == "training")

    def reset(self) -> None:
        self.model.zero_grad(set_to_none=True)
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
        for name, p in self.model.named_parameters():
            results[f"grad {name}"] = p.grad
        return results


def _named_outputs(output: Tensor, hidden) -> dict[str, Tensor]:
    if isinstance(hidden, tuple):
        return {"output": output, "h_n": hidden[0], "c_n": hidden[1]}
    return {"output": output, "h_n": hidden}


def make_pair(case: Case, mode: str, device="cpu", dtype=torch.float32, seed: int = 0):
    """(torch.nn workload, fastrnn workload) for `case` in `mode`, same weights and inputs."""
    torch.manual_seed(seed)
    kwargs = dict(num_layers=case.layers, bidirectional=case.bidir, device=device, dtype=dtype)
    if case.cell.startswith("rnn_"):
        kwargs["nonlinearity"] = case.cell.removeprefix("rnn_")
    ref = _TORCH[case.cell](case.I, case.H, **kwargs)
    fast = _FASTRNN[case.cell](case.I, case.H, **kwargs)
    fast.load_state_dict(ref.state_dict())

    x = torch.randn(case.T, case.B, case.I, device=device, dtype=dtype)
    state_shape = (case.layers * case.D, case.B, case.H)
    h0 = torch.randn(state_shape, device=device, dtype=dtype)
    c0 = torch.randn(state_shape, device=device, dtype=dtype) if case.cell == "lstm" else None

    def hx():
        return (h0.clone(), c0.clone()) if c0 is not None else h0.clone()

    return Workload(ref, x.clone(), hx(), mode), Workload(fast, x.clone(), hx(), mode)


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
