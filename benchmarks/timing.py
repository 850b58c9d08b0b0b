"""The timing loop (alternating pairs) and the machine's GEMM ceiling.

Every figure is wall-clock time from time.perf_counter around one `run()`. `sync` is called
before starting and before stopping the clock: a no-op on the CPU; a device synchronize
for asynchronous devices.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass

import torch

# Fewest timed pairs per row, whatever the time budget: one with each implementation first.
MIN_PAIRS = 2


def no_sync() -> None:
    pass


@dataclass
class PairTimes:
    """Seconds of each run, index i of both lists being pair i."""

    first: list[float]
    second: list[float]

    @property
    def median_first(self) -> float:
        return statistics.median(self.first)

    @property
    def median_second(self) -> float:
        return statistics.median(self.second)

    @property
    def median_ratio(self) -> float:
        """Median over pairs of first/second: >1 means `second` was faster."""
        return statistics.median(a / b for a, b in zip(self.first, self.second))


def time_pairs(first, second, *, pairs: int, warmup: int, max_seconds: float | None = None,
               sync=no_sync) -> PairTimes:
    """Times `first` and `second` (objects with reset() and run()) in alternation.

    `warmup` untimed runs of each, then up to `pairs` timed pairs: pair i runs first-then-second for
    even i and second-then-first for odd i, so that drift in the machine's speed (other load,
    frequency, caches) falls on both alike. No new pair starts once `max_seconds` have passed since
    the first timed run, as long as MIN_PAIRS pairs are done. reset() runs outside the clock.
    """
    for _ in range(warmup):
        for w in (first, second):
            w.reset()
            w.run()
    gc.collect()
    times = PairTimes([], [])
    start = time.perf_counter()
    for i in range(pairs):
        if i >= MIN_PAIRS and max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        order = ((first, times.first), (second, times.second))
        for w, out in order if i % 2 == 0 else reversed(order):
            w.reset()
            sync()
            t0 = time.perf_counter()
            w.run()
            sync()
            out.append(time.perf_counter() - t0)
    return times


def gemm_ceiling(n: int = 2048, repeats: int = 5, device="cpu", dtype=torch.float32, sync=no_sync):
    """(best, median) GFLOP/s of torch.mm on [n, n] x [n, n] over `repeats` timed runs after one warm-up.

    The best run is taken as the machine's ceiling: the rate the BLAS reached on this machine.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        rates.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return max(rates), statistics.median(rates)
