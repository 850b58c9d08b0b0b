"""Activation microbenchmark: op-level forward time where the pointwise pass (sigmoid, tanh) weighs most.

One layer, inference, T=256, B=8, H=128 (small GEMMs, so the per-unit activations are a large share).
Usage: python -m benchmarks.activations   (prints ms per call, best of 7, as JSON). For an A/B of two builds,
run it alternately under each, as the issue notes do; no threshold: these machines are noisy.
"""

from __future__ import annotations

import json
import timeit

import torch

import fastrnn  # noqa: F401  (registers the ops)


def main() -> None:
    torch.manual_seed(0)
    T, B, H = 256, 8, 128
    results = {}
    for name, G in (("lstm", 4), ("gru", 3), ("rnn_tanh", 1)):
        op = getattr(torch.ops.fastrnn, f"{name}_layer")
        x, h0 = torch.randn(T, B, H), torch.zeros(1, B, H)
        w_ih, w_hh, b = torch.randn(1, G * H, H) * 0.1, torch.randn(1, G * H, H) * 0.1, torch.randn(1, G * H)
        if name == "lstm":
            def call():
                return op(x, w_ih, b, h0, h0, w_hh, b, None, None, False)
        else:
            def call():
                return op(x, w_ih, b, h0, w_hh, b, None, False)
        for _ in range(5):
            call()
        results[name] = min(timeit.repeat(call, number=20, repeat=7)) / 20 * 1e3
    print(json.dumps({"ms_per_call": results, "T": T, "B": B, "H": H}))


if __name__ == "__main__":
    main()
