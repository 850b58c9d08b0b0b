"""pytest-benchmark entry point: `pytest benchmarks/ --benchmark-only`.

One benchmark per quick-grid case, mode and implementation (torch.nn and fastrnn), each timing one
`Workload.run()` (the step python -m benchmarks times) after checking it against torch.nn. Track
regressions between commits with pytest-benchmark's own tools:

    pytest benchmarks/ --benchmark-only --benchmark-autosave          # stores .benchmarks/...
    pytest benchmarks/ --benchmark-only --benchmark-compare           # compares with the last saved run
    pytest benchmarks/ --benchmark-only --benchmark-compare-fail=median:10%

The CPU's device unless FASTRNN_BENCH_DEVICE says cuda. Not collected by the test suite (testpaths = tests).
"""

from __future__ import annotations

import os

import pytest
import torch

from benchmarks.configs import MODES, QUICK_CASES
from benchmarks.workloads import BASELINE, TOLERANCE, compare, make_workloads

DEVICE = os.environ.get("FASTRNN_BENCH_DEVICE", "cpu")


@pytest.mark.parametrize("impl", ["fastrnn", "torch"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", QUICK_CASES, ids=[c.label().replace(" ", "-") for c in QUICK_CASES])
def test_bench(benchmark, case, mode, impl):
    workloads = make_workloads(case, mode, [BASELINE, impl] if impl != BASELINE else [BASELINE], device=DEVICE)
    workload = workloads[impl]
    workloads[BASELINE].reset()
    expected = workloads[BASELINE].run()
    workload.reset()
    error, where = compare(expected, workload.run())
    assert error <= TOLERANCE[torch.float32], f"{impl} differs from torch.nn at {where}: {error:.2e}"
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    def step():
        workload.run()
        sync()

    benchmark.extra_info.update(case=case.as_dict(), mode=mode, impl=impl, device=DEVICE)
    benchmark.pedantic(step, setup=workload.reset, rounds=5, iterations=1, warmup_rounds=1)
