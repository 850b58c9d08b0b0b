"""The kernels' sigmoid and tanh against float64 torch, for every CPU capability this machine has.

The CPU pointwise kernels are built three times (portable, AVX2, AVX-512; csrc/cpu/pointwise_*.cpp)
and torch's own capability picks one at run time; float AVX2/AVX-512 compute sigmoid and tanh with
their own exp and reciprocal (csrc/cpu/pointwise.h). The parity tests only see the capability the
test process runs at, and only moderate pre-activations, so here each capability runs in its own
process (ATEN_CPU_CAPABILITY) over pre-activations in [-100, 100], tiny values, +-0, +-inf and NaN.

The ops expose the activations directly: an RNN-tanh layer with zero input, weights and h0 outputs
tanh(b_ih); an LSTM layer's workspace holds the activated gates, its input gate i = sigmoid(b_ih_i).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

CAPABILITIES = ["default", "avx2", "avx512"]  # torch's names, lowest first

# Relative error bound in units of the dtype's 2^-mantissa: the kernels' exp (about 1 ulp), their
# reciprocal (Newton-refined, about 1 ulp) and the one or two roundings after them add up to a few
# ulps; measured worst cases are about 3. Below 1e-30 (sigmoid of x < -69) the bound is absolute.
MAX_ULPS = 8
TINY = 1e-30

_SCRIPT = r"""
import json, sys
import torch
import fastrnn  # noqa: F401

dtype = getattr(torch, sys.argv[1])
x = torch.cat([torch.linspace(-100, 100, 100001, dtype=torch.float64),
               torch.linspace(-0.3, 0.3, 20001, dtype=torch.float64),
               torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 1e-30, -1e-30, 1e-300,
                             0.25, -0.25, 88.0, -88.0, 88.8, -88.8, 710.0, -710.0], dtype=torch.float64)]).to(dtype)
# Each call feeds H values as the bias b_ih of a one-step, one-row layer whose input x and weights are
# zero, so the pre-activations are exactly those values (a GEMM would turn inf * 0 into NaN).
N, H = x.numel(), 256
chunks = [x[i:i + H] for i in range(0, N, H)]
tanh, sigmoid = [], []
for c in chunks:
    n = c.numel()
    zero_x, h0 = torch.zeros(1, 1, 1, dtype=dtype), torch.zeros(1, 1, n, dtype=dtype)
    y, _, _ = torch.ops.fastrnn.rnn_tanh_layer(zero_x, torch.zeros(1, n, 1, dtype=dtype), c.view(1, n), h0,
                                               torch.zeros(1, n, n, dtype=dtype), None, None, False)
    tanh.append(y.reshape(-1))
    gates = torch.zeros(1, 4 * n, dtype=dtype)
    gates[0, :n] = c  # the input gate i
    _, _, _, workspace = torch.ops.fastrnn.lstm_layer(zero_x, torch.zeros(1, 4 * n, 1, dtype=dtype), gates, h0, h0,
                                                      torch.zeros(1, 4 * n, n, dtype=dtype), None, None, None, True)
    sigmoid.append(workspace.reshape(5, n)[0])
tanh, sigmoid = torch.cat(tanh), torch.cat(sigmoid)

out = {"capability": torch.backends.cpu.get_cpu_capability()}
for name, got, ref in (("tanh", tanh, torch.tanh(x.double())), ("sigmoid", sigmoid, torch.sigmoid(x.double()))):
    got = got.double()
    finite = ~ref.isnan()
    err = (got - ref).abs()
    big = finite & (ref.abs() >= 1e-30)
    worst = int((err / ref.abs().clamp(min=1e-30)).where(big, torch.zeros_like(err)).argmax())
    nonzero = finite & (ref != 0)
    out[name] = {
        "max_rel_err": float((err[big] / ref[big].abs()).max()),
        "worst_x": float(x[worst]),
        "max_abs_err_tiny": float(err[finite & ~big].max()) if bool((finite & ~big).any()) else 0.0,
        "nan_where_expected": bool(torch.equal(got.isnan(), ref.isnan())),
        "signs_match": bool(torch.equal(torch.signbit(got[nonzero]), torch.signbit(ref[nonzero]))),
    }
print(json.dumps(out))
"""


def _supported_capabilities():
    best = torch.backends.cpu.get_cpu_capability().lower()
    if best not in CAPABILITIES:
        return ["default"]
    return CAPABILITIES[: CAPABILITIES.index(best) + 1]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("capability", _supported_capabilities())
def test_activation_accuracy(capability, dtype):
    env = dict(os.environ, ATEN_CPU_CAPABILITY=capability)
    run = subprocess.run([sys.executable, "-c", _SCRIPT, dtype], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["capability"].lower() == capability, f"asked for {capability}, torch ran at {result['capability']}"
    eps = torch.finfo(getattr(torch, dtype)).eps / 2  # 2^-24 (float32), 2^-53 (float64)
    for name in ("tanh", "sigmoid"):
        r = result[name]
        ulps = r["max_rel_err"] / eps
        assert ulps <= MAX_ULPS, f"{capability} {dtype} {name}: {ulps:.1f} ulps at x = {r['worst_x']}"
        assert r["max_abs_err_tiny"] <= TINY, f"{capability} {dtype} {name}: {r['max_abs_err_tiny']} below {TINY}"
        assert r["nan_where_expected"], f"{capability} {dtype} {name}: NaN not propagated exactly"
        assert r["signs_match"], f"{capability} {dtype} {name}: wrong sign"
