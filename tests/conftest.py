"""Shared test fixtures and helpers: tolerances, module pairs, inputs, outputs + gradients.

Helpers are plain functions; test files import them with `from conftest import ...` (pytest puts
tests/ on sys.path, there being no tests/__init__.py).

Conventions (see /work/shared/ARCHITECTURE.md, "Testing"):
- float64 on the CPU is the main precision: the kernels support double, so parity is checked
  with a tight tolerance and gradcheck is exact.
- float32 uses a looser per-dtype tolerance (TOLERANCES below).
- half / bfloat16 use a relative rule instead of a fixed tolerance: fastrnn's error against a
  float64 reference may be at most about twice torch.nn's own error in that dtype, plus a floor
  of one unit in the last place at the tensor's scale (assert_low_precision_close).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from unittest import mock

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from fastrnn import functional as fastrnn_functional

# ----------------------------------------------------------------------------- hypothesis profiles

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # a test extra: without it only test_property.py fails (at import), not every file
    settings = None

if settings is not None:
    # "ci": reproducible (derandomize: the same examples on every run, so a failure is never a
    # fluke of the draw) and modest in size. No deadline: a shared 2-core CI runner's timing says
    # nothing about the code, and a deadline there would only make the suite flaky.
    settings.register_profile(
        "ci",
        derandomize=True,
        deadline=None,
        max_examples=25,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    # "dev": random draws (hypothesis' database replays past failures), more examples, and a
    # generous deadline that only catches a pathological slowdown or hang (an example takes ~50 ms).
    settings.register_profile(
        "dev",
        deadline=5000,  # milliseconds
        max_examples=60,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() not in ("", "0", "false", "no", "off")


HYPOTHESIS_PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _truthy(os.environ.get("CI")) else "dev")
if settings is not None:
    settings.load_profile(HYPOTHESIS_PROFILE)


# ----------------------------------------------------------------------------- the cuda marker

def pytest_collection_modifyitems(config, items):
    """Tests marked `pytest.mark.cuda` (marker declared in pyproject.toml) skip without a GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


# ----------------------------------------------------------------------------- tolerances

# (rtol, atol) per dtype, for comparisons of the same computation done two ways (fastrnn vs
# torch.nn, kernels vs reference). The problems in these tests are small: T <= 6 steps, <= 3
# layers, dot products of <= ~20 terms, values and gradients of order 1-10.
TOLERANCES = {
    # float64 (eps 2.2e-16): two correct implementations differ only in summation order, which
    # here costs ~1e-14 relative at most (observed over the parity grid and the property test:
    # 3e-15). rtol 1e-9 leaves a margin of 1e5 above that, and is
    # still far below float32's eps (1.2e-7), so a kernel that silently computed a double op in
    # float (or dropped a term of size 1e-8) fails. atol 1e-11 only matters for elements that
    # cancel to ~0 (gradients summed over steps), whose absolute error is ~1e-15 * sum|terms|.
    torch.float64: dict(rtol=1e-9, atol=1e-11),
    # float32 (eps 1.2e-7): the same rounding argument gives ~1e-6 relative after the steps and
    # layers of these tests (observed: 8e-7). rtol 1e-4 / atol 1e-5 leave a margin of ~100x,
    # while a wrong formula, gate order or missing term shows up at 1e-2 or more.
    torch.float32: dict(rtol=1e-4, atol=1e-5),
}

LOW_PRECISION = (torch.bfloat16, torch.float16)


def tol(dtype: torch.dtype) -> dict:
    """rtol/atol for `dtype` (float64 or float32); half/bf16 use assert_low_precision_close."""
    if dtype not in TOLERANCES:
        raise KeyError(f"no fixed tolerance for {dtype}: use assert_low_precision_close for half/bfloat16")
    return TOLERANCES[dtype]


def assert_results_close(actual: dict, expected: dict, *, dtype=None, what: str = "") -> None:
    """Compares two dicts of tensors (as outputs_and_grads returns) key by key with tol(dtype)."""
    assert actual.keys() == expected.keys(), f"{what}: different results {sorted(actual)} vs {sorted(expected)}"
    for key in expected:
        a, e = actual[key], expected[key]
        t = tol(dtype or e.dtype)
        torch.testing.assert_close(a, e, **t, msg=lambda m, key=key: f"{what} [{key}]: {m}")


def low_precision_error(x: torch.Tensor, ref64: torch.Tensor) -> float:
    """Max absolute error of a low-precision result against its float64 reference."""
    assert x.shape == ref64.shape, (x.shape, ref64.shape)
    return (x.double() - ref64.double()).abs().max().item()


def assert_low_precision_close(fast: dict, torch_nn: dict, ref64: dict, dtype: torch.dtype, what: str = "",
                               factor: float = 2.0) -> None:
    """The rule for half/bfloat16 (ARCHITECTURE.md): per result tensor,

        max|fastrnn - ref64| <= factor * max|torch.nn - ref64| + eps(dtype) * max(1, max|ref64|)

    ref64 is the same computation in float64 from the same (rounded) weights and inputs. The
    floor, one unit in the last place at the tensor's scale, keeps the rule meaningful where
    torch.nn happens to be exact (e.g. a result that is one rounding of an exact value).
    Measured on these problems, fastrnn's ratio stays below ~1.1 (max over seeds), so 2x is a
    bound on a genuinely worse computation, not on noise.
    """
    assert fast.keys() == torch_nn.keys() == ref64.keys()
    eps = torch.finfo(dtype).eps
    failures = []
    for key, ref in ref64.items():
        assert fast[key].dtype == dtype, f"{what} [{key}]: fastrnn returned {fast[key].dtype}, expected {dtype}"
        assert torch.isfinite(fast[key]).all(), f"{what} [{key}]: fastrnn returned non-finite values"
        err_fast = low_precision_error(fast[key], ref)
        err_torch = low_precision_error(torch_nn[key], ref)
        bound = factor * err_torch + eps * max(1.0, ref.abs().max().item())
        if not err_fast <= bound:
            failures.append(f"[{key}] fastrnn error {err_fast:.3g} > {factor} x torch.nn error {err_torch:.3g} "
                            f"+ floor = {bound:.3g}")
    assert not failures, f"{what} ({dtype}):\n" + "\n".join(failures)


# ----------------------------------------------------------------------------- modules

@dataclasses.dataclass(frozen=True)
class CellKind:
    """One recurrent cell as both libraries spell it."""

    name: str
    torch_cls: type
    fastrnn_cls: type
    kwargs: tuple = ()  # extra constructor arguments, as (key, value) pairs
    torch_cell: type | None = None
    fastrnn_cell: type | None = None

    @property
    def is_lstm(self) -> bool:
        return self.torch_cls is nn.LSTM

    @property
    def proj_size(self) -> int:
        return dict(self.kwargs).get("proj_size", 0)

    @property
    def mode(self) -> str:
        """The mode string of torch._VF / fastrnn.functional.rnn / fastrnn.reference.rnn."""
        if self.torch_cls is nn.RNN:
            return "RNN_" + dict(self.kwargs)["nonlinearity"].upper()
        return self.torch_cls.__name__.upper()


# proj_size 3 with hidden 7: P < H, both odd and not powers of two.
CELL_KINDS = {
    "rnn_tanh": CellKind("rnn_tanh", nn.RNN, fastrnn.RNN, (("nonlinearity", "tanh"),), nn.RNNCell, fastrnn.RNNCell),
    "rnn_relu": CellKind("rnn_relu", nn.RNN, fastrnn.RNN, (("nonlinearity", "relu"),), nn.RNNCell, fastrnn.RNNCell),
    "lstm": CellKind("lstm", nn.LSTM, fastrnn.LSTM, (), nn.LSTMCell, fastrnn.LSTMCell),
    "lstm_proj": CellKind("lstm_proj", nn.LSTM, fastrnn.LSTM, (("proj_size", 3),)),
    "gru": CellKind("gru", nn.GRU, fastrnn.GRU, (), nn.GRUCell, fastrnn.GRUCell),
}


def init_parameters(module: nn.Module, seed: int) -> nn.Module:
    """Re-draws every parameter from torch.nn's init distribution U(-1/sqrt(H), 1/sqrt(H)) with a
    private generator, so that tests are reproducible without touching the global RNG."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(module.hidden_size)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.empty(p.shape, dtype=torch.float64).uniform_(-bound, bound, generator=gen))
    return module


def copy_weights(src: nn.Module, dst: nn.Module) -> nn.Module:
    """Copies every parameter of `src` into `dst` (torch.nn -> fastrnn or fastrnn -> torch.nn).

    fastrnn's modules have torch.nn's parameter names and shapes, so load_state_dict(strict=True)
    works both ways; this asserts it, names included."""
    src_names = [n for n, _ in src.named_parameters()]
    dst_names = [n for n, _ in dst.named_parameters()]
    assert src_names == dst_names, f"parameter names differ: {src_names} vs {dst_names}"
    result = dst.load_state_dict(src.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys, result
    return dst


def make_pair(kind: CellKind, input_size: int, hidden_size: int, *, num_layers: int = 1, bidirectional=False,
              bias=True, batch_first=False, dtype=torch.float64, device="cpu", seed: int = 0):
    """A torch.nn layer and its fastrnn twin with identical (seeded) weights: (torch_module, fastrnn_module)."""
    kw = dict(kind.kwargs, num_layers=num_layers, bidirectional=bidirectional, bias=bias, batch_first=batch_first)
    ref = init_parameters(kind.torch_cls(input_size, hidden_size, dtype=torch.float64, **kw), seed)
    ref = ref.to(dtype=dtype, device=device)
    twin = kind.fastrnn_cls(input_size, hidden_size, dtype=dtype, device=device, **kw)
    copy_weights(ref, twin)
    return ref, twin


def make_cell_pair(kind: CellKind, input_size: int, hidden_size: int, *, bias=True, dtype=torch.float64,
                   device="cpu", seed: int = 0):
    """A torch.nn cell and its fastrnn twin with identical weights (copied fastrnn -> torch.nn)."""
    kw = {"nonlinearity": dict(kind.kwargs)["nonlinearity"]} if kind.torch_cell is nn.RNNCell else {}
    twin = init_parameters(kind.fastrnn_cell(input_size, hidden_size, bias=bias, dtype=torch.float64, **kw), seed)
    twin = twin.to(dtype=dtype, device=device)
    ref = kind.torch_cell(input_size, hidden_size, bias=bias, dtype=dtype, device=device, **kw)
    copy_weights(twin, ref)
    return ref, twin


@contextlib.contextmanager
def force_reference():
    """Within the block, fastrnn's modules run fastrnn.reference.rnn instead of the kernels."""
    # (the cells' plain call in C++ asks plain_calls_allowed, not implementation_for)
    with mock.patch.object(fastrnn_functional, "implementation_for", lambda device, *args, **kwargs: fastrnn.reference.rnn), \
            mock.patch.object(fastrnn_functional, "plain_calls_allowed", lambda: False):
        yield


# ----------------------------------------------------------------------------- inputs

@dataclasses.dataclass(frozen=True)
class InputCase:
    """How a test feeds a layer.

    kind: "padded" (3-D tensor), "packed" (pack_padded_sequence, enforce_sorted=True: lengths must
    be non-increasing), "packed_unsorted" (enforce_sorted=False) or "unbatched" (2-D [T, I]).
    lengths: per-sequence lengths in batch order (packed kinds; T = max, B = len).
    batch_first: the module's flag (padded: the input layout; unbatched: valid, and [T, I] either
    way; packed: ignored by torch.nn, so fastrnn must ignore it too).
    layout: "contiguous"; "slice" (input and hx are slices of wider tensors; for packed, the
    PackedSequence's data is); "transposed" (padded: the tensor is a transpose of contiguous storage).
    """

    kind: str
    T: int = 5
    B: int = 3
    lengths: tuple | None = None
    batch_first: bool = False
    hx: bool = True
    layout: str = "contiguous"

    def __post_init__(self):
        if self.lengths is not None:
            object.__setattr__(self, "T", max(self.lengths))
            object.__setattr__(self, "B", len(self.lengths))
        if self.kind == "unbatched":
            object.__setattr__(self, "B", 1)
        assert self.kind in ("padded", "packed", "packed_unsorted", "unbatched"), self.kind
        assert (self.lengths is not None) == self.kind.startswith("packed"), self
        if self.kind == "packed":
            assert list(self.lengths) == sorted(self.lengths, reverse=True), "enforce_sorted needs sorted lengths"

    @property
    def id(self) -> str:
        parts = [self.kind]
        parts.append(f"L{'-'.join(map(str, self.lengths))}" if self.lengths else f"T{self.T}B{self.B}")
        if self.batch_first:
            parts.append("bf")
        parts.append("hx" if self.hx else "nohx")
        if self.layout != "contiguous":
            parts.append(self.layout)
        return "_".join(parts)


def _randn(shape, gen, dtype, device):
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)


def make_input(case: InputCase, input_size: int, *, dtype=torch.float64, device="cpu", seed: int = 1):
    """Builds the module input for `case`. Returns (module_input, leaves): leaves maps a name to each
    tensor that requires grad (the storage the input is a view of)."""
    gen = torch.Generator().manual_seed(seed)
    T, B, I = case.T, case.B, input_size
    if case.kind == "unbatched":
        if case.layout == "slice":
            base = _randn((T, I + 3), gen, dtype, device).requires_grad_()
            return base[:, 1:1 + I], {"input": base}
        assert case.layout == "contiguous", case
        base = _randn((T, I), gen, dtype, device).requires_grad_()
        return base, {"input": base}
    if case.kind == "padded":
        if case.layout == "transposed":
            # Storage in the other layout, so that the module sees a non-contiguous transpose.
            base = _randn((T, B, I) if case.batch_first else (B, T, I), gen, dtype, device).requires_grad_()
            return base.transpose(0, 1), {"input": base}
        shape = (B, T) if case.batch_first else (T, B)
        if case.layout == "slice":
            base = _randn(shape + (I + 3,), gen, dtype, device).requires_grad_()
            return base[..., 1:1 + I], {"input": base}
        base = _randn(shape + (I,), gen, dtype, device).requires_grad_()
        return base, {"input": base}
    # Packed: padded time-major [T, B, I] with zeros past each length (what a padded batch holds).
    base = _randn((T, B, I), gen, dtype, device).requires_grad_()
    packed = pack_padded_sequence(base, torch.tensor(case.lengths), enforce_sorted=case.kind == "packed")
    if case.layout == "slice":
        data = torch.cat([packed.data, packed.data], dim=1)[:, 2:2 + I]
        assert not data.is_contiguous()
        packed = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
    return packed, {"input": base}


def make_hx(case: InputCase, kind: CellKind, num_layers: int, bidirectional: bool, hidden_size: int, *,
            dtype=torch.float64, device="cpu", seed: int = 2):
    """The initial state for `case` (None when case.hx is False), and its leaves by name."""
    if not case.hx:
        return None, {}
    gen = torch.Generator().manual_seed(seed)
    LD = num_layers * (2 if bidirectional else 1)
    P = kind.proj_size or hidden_size
    batch = () if case.kind == "unbatched" else (case.B,)
    extra = 2 if case.layout == "slice" else 0

    def state(last):
        base = _randn((LD,) + batch + (last + extra,), gen, dtype, device).requires_grad_()
        return (base[..., extra:] if extra else base), base

    h, h_leaf = state(P)
    if not kind.is_lstm:
        return h, {"h0": h_leaf}
    c, c_leaf = state(hidden_size)
    return (h, c), {"h0": h_leaf, "c0": c_leaf}


# ----------------------------------------------------------------------------- running

def _cotangent(t: torch.Tensor, seed: int, round_to: torch.dtype | None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(t.shape, generator=gen, dtype=torch.float64)
    if round_to is not None:
        c = c.to(round_to)
    return c.to(dtype=t.dtype, device=t.device)


def outputs_and_grads(module: nn.Module, input, hx=None, leaves: dict | None = None, *, seed: int = 3,
                      cotangent_dtype: torch.dtype | None = None) -> dict:
    """Runs `module(input, hx)` and backpropagates fixed random cotangents through every result.

    Works for the layers (RNN/LSTM/GRU, either library) and the cells. leaves: name -> leaf tensor
    (the input's and hx's storage) to differentiate with respect to, besides every parameter.
    Returns a dict of detached tensors: "output" (a PackedSequence's .data; cells: "h"), "h_n"
    (cells: "h"), "c_n" (LSTM; LSTMCell: "c"), "grad_<leaf>" and "grad_<parameter name>". The
    cotangents depend only on `seed` and the result shapes, so two modules computing the same
    function get the same ones (cotangent_dtype: rounded through that dtype first, so that a float64
    run sees exactly the cotangents of a low-precision one). Every leaf and parameter must receive
    a gradient.
    """
    result = module(input) if hx is None else module(input, hx)
    if isinstance(module, nn.RNNCellBase):
        outs = dict(zip(("h", "c"), result)) if isinstance(result, tuple) else {"h": result}
    else:
        output, hidden = result
        outs = {"output": output.data if isinstance(output, PackedSequence) else output}
        outs.update(dict(zip(("h_n", "c_n"), hidden)) if isinstance(hidden, tuple) else {"h_n": hidden})
    loss = sum((t * _cotangent(t, seed + i, cotangent_dtype)).sum() for i, t in enumerate(outs.values()))
    wrt = {f"grad_{name}": t for name, t in (leaves or {}).items()}
    wrt.update({f"grad_{name}": p for name, p in module.named_parameters()})
    grads = torch.autograd.grad(loss, list(wrt.values()))
    results = {k: v.detach() for k, v in outs.items()}
    results.update(zip(wrt.keys(), grads))
    return results


def layer_results(module, case: InputCase, kind: CellKind, num_layers: int, bidirectional: bool, input_size: int,
                  hidden_size: int, *, dtype=torch.float64, device="cpu") -> dict:
    """outputs_and_grads of a layer on the (seeded, so reproducible) input and hx of `case`."""
    x, leaves = make_input(case, input_size, dtype=dtype, device=device)
    hx, hx_leaves = make_hx(case, kind, num_layers, bidirectional, hidden_size, dtype=dtype, device=device)
    leaves.update(hx_leaves)
    return outputs_and_grads(module, x, hx, leaves)


def check_layer_parity(cell: str, num_layers: int, bidirectional: bool, bias: bool, case: InputCase, dtype, *,
                       input_size: int = 5, hidden_size: int = 7, reference: bool = False, device="cpu"):
    """fastrnn's layer (its kernels; its reference when `reference`) against torch.nn: outputs,
    final states and gradients w.r.t. the input, hx and every parameter, within tol(dtype).
    Returns the (torch_module, fastrnn_module) pair."""
    kind = CELL_KINDS[cell]
    ref, twin = make_pair(kind, input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                          bias=bias, batch_first=case.batch_first, dtype=dtype, device=device)
    args = (case, kind, num_layers, bidirectional, input_size, hidden_size)
    expected = layer_results(ref, *args, dtype=dtype, device=device)
    with force_reference() if reference else contextlib.nullcontext():
        actual = layer_results(twin, *args, dtype=dtype, device=device)
    for key in expected:
        assert actual[key].device == expected[key].device, key
    assert_results_close(actual, expected, dtype=dtype,
                         what=f"{cell} L={num_layers} bi={bidirectional} bias={bias} {case.id} {dtype} {device}"
                              f"{' (reference)' if reference else ''} vs torch.nn")
    return ref, twin
