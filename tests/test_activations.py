"""The kernels' sigmoid and tanh against float64 torch, for every CPU capability this machine has.

The CPU pointwise kernels are built three times (portable, AVX2, AVX-512; csrc/cpu/pointwise_*.cpp)
and torch's own capability picks one at run time; float AVX2/AVX-512 compute sigmoid and tanh with
their own exp and reciprocal (csrc/cpu/pointwise.h). The parity tests only see the capability the
test process runs at, and only moderate pre-activations, so here each capability runs in its own
process (ATEN_CPU_CAPABILITY) over pre-activations in [-100, 100], tiny values, +-0, +-inf and NaN, and a
sweep of every float32 range with every value around the saturation points and branch switches.

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


def float32_neighbourhood(center, count):  # the `count` float32 values on each side of `center`, every one
    bits = torch.tensor([center], dtype=torch.float32).view(torch.int32).item()
    return torch.arange(bits - count, bits + count + 1, dtype=torch.int32).view(torch.float32).double()


# Every range of float32 (one bit pattern in 2^13, both signs: denormals, normals, +-inf, NaNs), and every
# float32 around the points where the results saturate or the kernels switch branch: sigmoid's 1 (x ~ 16.6
# to 17.4) and 0 (exp(-x) overflows at x = -88.72), tanh's +-1 (|x| ~ 8.3 to 9.1), the exp clamps (87.3, 88,
# 2 * 43.65), tanh's series/exp split (0.25) and its two exp forms (|x| = ln(2) / 2 + ln(2), e = 1/4).
SWEEP = torch.cat([torch.arange(-2**31, 2**31, 2**13, dtype=torch.int64).to(torch.int32).view(torch.float32).double()]
                  + [float32_neighbourhood(c, 4000) for c in (16.6, 17.0, 17.33, -88.72283, -88.0, 87.3, 88.0,
                                                               43.65, 8.3, 8.66, 9.01, 0.25, 0.6931)]
                  + [float32_neighbourhood(-c, 4000) for c in (8.3, 8.66, 9.01, 0.25, 0.6931, 43.65, 16.6, 17.33)])
x = torch.cat([torch.linspace(-100, 100, 100001, dtype=torch.float64),
               torch.linspace(-0.3, 0.3, 20001, dtype=torch.float64),
               torch.tensor([float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 1e-30, -1e-30, 1e-300,
                             0.25, -0.25, 88.0, -88.0, 88.8, -88.8, 710.0, -710.0], dtype=torch.float64),
               SWEEP]).to(dtype)
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
for name, got, ref, own in (("tanh", tanh, torch.tanh(x.double()), torch.tanh(x)),
                            ("sigmoid", sigmoid, torch.sigmoid(x.double()), torch.sigmoid(x))):
    # Saturation against torch's own function in this dtype: exactly 0 / +-1 wherever torch's is (a biased
    # 1 - 2^-24 there is the fixed point that leaks a recurrent state), and 0 / +-1 only within a ulp of
    # where torch's is (no early saturation: the derivative s (1 - s) or 1 - t^2 from it is 0 too soon).
    saturated = ~own.isnan() & ((own == 0) | (own.abs() == 1))
    ulp_below_one = torch.finfo(dtype).eps / 2
    ours_saturated = ~got.isnan() & ((got.abs() == 1) | ((got == 0) & (x != 0)))
    within_a_ulp = ((got.abs() == 1) & (own.abs() >= 1 - ulp_below_one)) | ((got == 0) & (own.abs() < 1e-30))
    missed, early = saturated & (got != own), ours_saturated & ~saturated & ~within_a_ulp
    out[name + "_saturation"] = {"missed": int(missed.sum()), "missed_x": [float(v) for v in x[missed][:5]],
                                 "early": int(early.sum()), "early_x": [float(v) for v in x[early][:5]]}
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
        sat = result[name + "_saturation"]
        assert sat["missed"] == 0, (f"{capability} {dtype} {name}: not exactly torch's 0 / +-1 at {sat['missed']} "
                                    f"inputs, e.g. {sat['missed_x']}")
        assert sat["early"] == 0, (f"{capability} {dtype} {name}: 0 / +-1 more than a ulp before torch at "
                                   f"{sat['early']} inputs, e.g. {sat['early_x']}")
