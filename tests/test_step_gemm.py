"""The per-step GEMM's own kernel (csrc/cpu/panel_gemm_avx2.cpp), used for float steps where torch runs
at the AVX2 capability, against float64 (which never uses it), on every capability this machine has.

The parity tests exercise only the capability the test process runs at, so an AVX-512 machine would never
run the AVX2 kernel there. Here each capability runs in its own process (ATEN_CPU_CAPABILITY), on shapes
that hit every edge of the kernel: row tiles of 4 with 1-3 rows left over (B), panels of 24 columns with a
partial last one (G*H, and P with a projection), the backward's accumulating product (beta = 1), packed
sequences whose steps shrink to fewer rows, both directions, and large steps split across threads.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import fastrnn  # noqa: F401  (the subprocess imports it; fail here first if it does not load)
from conftest import tol
from test_activations import _supported_capabilities

# (module kwargs, batch, packed lengths or None); input_size 3 unless given, T = 6
CASES = [
    ("LSTM", dict(hidden_size=7), 5, None),           # G*H = 28: one full panel and 4 columns
    ("LSTM", dict(hidden_size=12, proj_size=5), 3, None),  # P = 5: a partial panel only; 3 rows: no full tile
    ("LSTM", dict(hidden_size=6, bidirectional=True), 8, (6, 6, 5, 4, 4, 2, 1, 1)),
    ("GRU", dict(hidden_size=9, num_layers=2), 1, None),   # one row: the 1-row tile
    ("GRU", dict(hidden_size=8), 6, (6, 5, 3, 3, 2, 1)),
    ("RNN", dict(hidden_size=29), 2, None),            # G*H = 29: a panel and 5 columns
    # Steps of 2^20+ multiply-adds outside a parallel region split their panels across threads:
    ("LSTM", dict(hidden_size=128), 64, None),          # 64 x 512 x 128 = 2^22: one slice, threaded panels
    ("LSTM", dict(hidden_size=100, proj_size=50), 63, None),  # 63 x 400 x 50: 16 panels and 16 columns
    # Products over all steps of 2^20+ multiply-adds run in chunks of 64 rows on the threads, against
    # groups of panels (8 at K = 512, 13 at K = 300): the projection [270, 512] @ [512, 300] with its bias
    # (12 panels and 12 columns, a last chunk of 14 rows), x's gradient [270, 300] @ [300, 512],
    # accumulated over the two directions. (x is scaled by 1/sqrt(input_size), see _SCRIPT.)
    ("GRU", dict(hidden_size=100, input_size=512, bidirectional=True), 45, None),
]

_SCRIPT = r"""
import sys
import torch
import fastrnn
from torch.nn.utils.rnn import pack_padded_sequence

torch.manual_seed(0)
results = {"step_gemm": fastrnn.backend_info()["cpu_step_gemm"],
           "capability": torch.backends.cpu.get_cpu_capability(), "cases": []}
for name, kwargs, batch, lengths in eval(sys.argv[1]):
    per_dtype = {}
    kwargs = {"input_size": 3, **kwargs}
    module64 = getattr(fastrnn, name)(dtype=torch.float64, **kwargs)
    # Unit-variance projections whatever input_size: W_ih's gradient sums 6 * batch products with x, and
    # the float32 tolerance (conftest.TOLERANCES) is set for results of order 1-10, not for sums of
    # hundreds of order-1 terms whose rounding alone reaches its atol.
    x64 = torch.randn(6, batch, kwargs["input_size"], dtype=torch.float64) / kwargs["input_size"] ** 0.5
    for dtype in (torch.float64, torch.float32):
        module = getattr(fastrnn, name)(dtype=dtype, **kwargs)
        module.load_state_dict(module64.state_dict())
        x = x64.to(dtype).clone().requires_grad_(True)
        inp = pack_padded_sequence(x, torch.tensor(lengths)) if lengths else x
        out, _ = module(inp)
        out = out.data if lengths else out
        out.backward(torch.ones_like(out))
        per_dtype[str(dtype)] = [out.detach(), x.grad] + [p.grad for p in module.parameters()]
    results["cases"].append(per_dtype)
torch.save(results, sys.argv[2])
"""


@pytest.mark.parametrize("capability", _supported_capabilities())
def test_step_gemm_float32_matches_float64(capability, tmp_path):
    path = tmp_path / "results.pt"
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    run = subprocess.run([sys.executable, "-c", _SCRIPT, repr(CASES), str(path)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    results = torch.load(path)
    assert results["capability"].lower() == capability
    # The kernel is what runs at AVX2 (else this test would check nothing new there), and only there.
    assert ("panel kernel" in results["step_gemm"]) == (capability == "avx2"), results["step_gemm"]
    for (name, kwargs, batch, lengths), per_dtype in zip(CASES, results["cases"]):
        for i, (got, want) in enumerate(zip(per_dtype["torch.float32"], per_dtype["torch.float64"])):
            torch.testing.assert_close(got.double(), want, **tol(torch.float32),
                                       msg=lambda m: f"{capability} {name} {kwargs} B={batch} result {i}: {m}")
