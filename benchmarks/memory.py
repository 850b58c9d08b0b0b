"""Peak memory of one step (one `Workload.run()`) per implementation.

* CUDA: torch.cuda.max_memory_allocated during one run (after the timed runs, so nothing is lazily
  initialised any more), minus what was allocated before it: the step's own tensors and workspaces.
* CPU: a fresh Python process builds that case's models and inputs (`python -m benchmarks.memory`); for
  each implementation in turn it resets the kernel's peak-RSS mark (writing 5 to /proc/self/clear_refs),
  runs the step once and reports VmHWM - VmRSS-before: how far the step raised the process's resident
  memory. The process runs with a fixed glibc mmap threshold (MALLOC_MMAP_THRESHOLD_=8 KiB), so that
  every buffer of 8 KiB or more is its own mapping, returned to the system when freed: one implementation's freed
  memory is not reused by the next, whose figure would then be too low. First runs include one-time
  allocations (fastrnn's kept buffers, oneDNN's primitive cache): they count, as a user's first step
  would. Linux only (elsewhere: None). Not measured for the compiled reference on the CPU (None): its
  first run is the compilation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from .configs import Case

_CLEAR_REFS = "/proc/self/clear_refs"
_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int:
    with open(_STATUS) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in {_STATUS}")


def cuda_peak_bytes(workload) -> int:
    workload.reset()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    workload.run()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def cpu_peak_bytes(case: Case, mode: str, impls, dtype: str, threads: int | None, timeout: float = 600) -> dict:
    """{impl: the step's peak RSS growth in bytes, or None where it cannot be measured}, from one fresh process."""
    measured = [impl for impl in impls if impl != "compiled"]
    result = {impl: None for impl in impls}
    if not measured or not sys.platform.startswith("linux"):
        return result
    spec = {"case": case.as_dict(), "mode": mode, "impls": measured, "dtype": dtype, "threads": threads}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(8 * 1024)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory", json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"memory subprocess failed: {done.stderr.strip().splitlines()[-1:]}")
    result.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return result


def _child(spec: dict) -> dict:
    from .workloads import make_workloads

    if spec["threads"] is not None:
        torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec["dtype"])
    workloads = make_workloads(Case(**spec["case"]), spec["mode"], spec["impls"], dtype=dtype)
    peaks = {}
    for impl, workload in workloads.items():
        try:
            with open(_CLEAR_REFS, "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        except OSError:
            return {impl: None for impl in workloads}
        before = _status_kib("VmRSS")
        workload.run()
        peaks[impl] = max(0, _status_kib("VmHWM") - before) * 1024
    return peaks


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
