"""The timing loop (implementations alternated round by round), the two clocks, and the GEMM ceiling.

On the CPU every figure is wall-clock time from time.perf_counter around one `run()`. On a GPU it is
the time between two CUDA events recorded on the current stream around one `run()` (the host then
waits for the second), so queued work from before is not counted.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass

import torch

# Fewest timed rounds per case, whatever the time budget: every implementation first once, for two.
MIN_ROUNDS = 2


def no_sync() -> None:
    pass


def cpu_clock(run) -> float:
    """Seconds of one run() by time.perf_counter."""
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def cuda_clock(run) -> float:
    """Seconds of one run() between CUDA events on the current stream."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3


@dataclass
class RoundTimes:
    """Seconds of each run by implementation; index i of every list is round i."""

    times: dict[str, list[float]]

    @property
    def rounds(self) -> int:
        return len(next(iter(self.times.values())))

    def median(self, impl: str) -> float:
        return statistics.median(self.times[impl])

    def median_ratio(self, baseline: str, impl: str) -> float:
        """Median over rounds of baseline / impl: >1 means `impl` was faster."""
        return statistics.median(a / b for a, b in zip(self.times[baseline], self.times[impl]))


def time_rounds(workloads: dict, *, rounds: int, warmup: int, max_seconds: float | None = None,
                clock=cpu_clock) -> RoundTimes:
    """Times the workloads (objects with reset() and run()) in alternation.

    `warmup` untimed runs of each, then up to `rounds` timed rounds, each running every workload once:
    round i starts at the i-th implementation (a rotation), so that drift in the machine's speed (other
    load, frequency, caches) falls on all alike and none always runs first. No new round starts once
    `max_seconds` have passed since the first timed run, as long as MIN_ROUNDS are done. reset() runs
    outside the clock.
    """
    names = list(workloads)
    for _ in range(warmup):
        for name in names:
            workloads[name].reset()
            workloads[name].run()
    gc.collect()
    times = RoundTimes({name: [] for name in names})
    start = time.perf_counter()
    for i in range(rounds):
        if i >= MIN_ROUNDS and max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
        for k in range(len(names)):
            name = names[(i + k) % len(names)]
            workloads[name].reset()
            times.times[name].append(clock(workloads[name].run))
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
