"""The benchmark suite (python -m benchmarks): a quick run end to end on the CPU and the files it writes, the
correctness gate (a wrong implementation is flagged and never timed), the pytest-benchmark entry point, and
the argument checks.

Timing results are never asserted (the machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.__main__ import main, parse_args, run_case
from benchmarks.configs import Case, select_cases
from benchmarks.workloads import make_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG = b"\x89PNG\r\n\x1a\n"

RECORD_TYPES = {
    "cell": str, "T": int, "B": int, "I": int, "H": int, "layers": int, "bidirectional": bool, "dtype": str,
    "device": str, "mode": str, "impl": str, "median_ms": float, "speedup_vs_torch": float, "gflops": float,
    "peak_mem_bytes": int, "correct": bool,
}


def test_quick_run_writes_table_json_and_plots(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["--quick", "--device", "cpu", "--cells", "rnn_relu", "--lm-steps", "4", "--out", str(out)])
    assert code == 0
    stdout = capsys.readouterr().out
    assert "| RNN-relu T=50 B=8 I=128 H=128 bidir | float32 | training  | fastrnn   |" in stdout
    assert "final losses" in stdout and ": agree" in stdout
    for name in ("speedup.png", "lm_loss.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    document = json.loads((out / "results.json").read_text())
    assert document["torch"] == torch.__version__
    assert "fastrnn_commit" in document and "machine" in document
    records = document["records"]
    assert {(r["mode"], r["impl"]) for r in records} == {
        (mode, impl) for mode in ("inference", "training") for impl in ("torch", "fastrnn", "reference")}
    for r in records:
        for key, kind in RECORD_TYPES.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["status"] == "ok" and r["correct"] is True
        assert r["device"] == "cpu" and r["dtype"] == "float32"
        assert r["median_ms"] > 0 and r["peak_mem_bytes"] >= 0
    assert all(r["speedup_vs_torch"] == 1.0 for r in records if r["impl"] == "torch")
    lm = document["lm"]
    assert lm["losses_agree"] is True and len(lm["torch_losses"]) == len(lm["fastrnn_losses"]) == 4


class _CountingRNN(torch.nn.Module):
    """Wraps a model and counts its forward calls."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x, hx):
        self.calls += 1
        return self.inner(x, hx)


def _args(**overrides):
    defaults = dict(device="cpu", tf32=None, repeats=3, warmup=2, max_time=None, no_memory=True, threads=None)
    return argparse.Namespace(**{**defaults, **overrides})


@pytest.mark.parametrize("mode", ["inference", "training"])
def test_a_wrong_implementation_is_flagged_and_never_timed(mode):
    case = Case("gru", T=6, B=3, I=5, H=7)
    models = make_models(case, ["torch", "fastrnn"])
    wrong, params = models["fastrnn"]
    with torch.no_grad():
        wrong.weight_hh_l0[0, 0] += 0.5  # one wrong weight: a plausible kernel bug's size
    counted = _CountingRNN(wrong)
    models["fastrnn"] = (counted, params)
    records = {r["impl"]: r for r in run_case(case, mode, "float32", _args(), ceiling=100.0, models=models)}
    bad = records["fastrnn"]
    assert bad["status"] == "FAILED" and bad["correct"] is False
    assert bad["median_ms"] is None and bad["speedup_vs_torch"] is None and bad["times_ms"] == []
    assert "scaled error" in bad["detail"]
    assert counted.calls == 1  # the check, and nothing timed
    assert records["torch"]["status"] == "ok" and records["torch"]["median_ms"] > 0


def test_an_implementation_that_raises_is_an_error_not_a_timing():
    case = Case("rnn_tanh", T=4, B=2, I=3, H=5)
    models = make_models(case, ["torch", "fastrnn"])

    class Broken(torch.nn.Module):
        def forward(self, x, hx):
            raise RuntimeError("kernel exploded")

    models["fastrnn"] = (Broken(), models["fastrnn"][1])
    records = {r["impl"]: r for r in run_case(case, "inference", "float32", _args(), ceiling=100.0, models=models)}
    assert records["fastrnn"]["status"] == "ERROR" and "kernel exploded" in records["fastrnn"]["detail"]
    assert records["fastrnn"]["median_ms"] is None


def test_pytest_benchmark_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/test_bench.py", "-q", "-p", "no:cacheprovider",
         "--benchmark-disable", "-k", "RNN-relu and inference and fastrnn"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout


def test_benchmark_gpu_grid_is_issue_3s():
    cases = select_cases(["lstm", "gru", "rnn_tanh"], "gpu")
    assert len(cases) == 3 * 4 * 3
    assert {(c.B, c.H) for c in cases} == {(B, H) for B in (1, 8, 64, 256) for H in (128, 512, 1024)}
    assert all(c.T == 100 and c.I == c.H for c in cases)


def test_quick_grid_defaults():
    args = parse_args(["--quick", "--device", "cpu"])
    assert args.grid == "quick" and args.compare == ["torch", "fastrnn", "reference"]
    assert {c.cell for c in select_cases(args.cells, args.grid)} == {"lstm", "gru", "rnn_tanh", "rnn_relu"}
    assert any((c.T, c.B, c.I, c.H, c.layers, c.bidir) == (100, 64, 512, 512, 1, False)
               for c in select_cases(["lstm"], "quick"))  # the classic configuration
    assert parse_args(["--device", "cpu"]).compare == ["torch", "fastrnn", "reference", "compiled"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given where torch sees no GPU")
def test_benchmark_cuda_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])
    assert "torch sees no CUDA device here" in capsys.readouterr().err


def test_benchmark_tf32_needs_cuda_float32(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--device", "cpu", "--tf32", "on"])
    assert "--tf32 applies to --device cuda with float32 in --dtypes only" in capsys.readouterr().err


def test_benchmark_rejects_unknown_implementation(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--compare", "fastrnn,cudnn"])
    assert "expected a comma list of fastrnn, torch, reference, compiled" in capsys.readouterr().err


def test_compiled_reference_runs_and_passes_the_check():
    """The reference under torch.compile, on a tiny case (compiling the unrolled loop costs time per step)."""
    case = Case("rnn_tanh", T=3, B=2, I=3, H=4)
    records = {r["impl"]: r for r in run_case(case, "inference", "float32", _args(compare=["torch", "compiled"]),
                                              ceiling=100.0, models=make_models(case, ["torch", "compiled"]))}
    assert records["compiled"]["status"] == "ok", records["compiled"]["detail"]
    assert records["compiled"]["correct"] is True and records["compiled"]["median_ms"] > 0


def test_cost_model_counts_from_the_kernels_plan(tmp_path):
    """benchmarks/cost_model.py (the prediction a first GPU run checks): its FLOPs, launches and barriers follow
    from the shapes, its split is the persistent kernel's own plan, and it writes its table."""
    from benchmarks import cost_model

    anchor = cost_model.Case("lstm", T=1024, B=16, H=768, I=768, dtype="float16")
    assert cost_model.flops(anchor)["forward"] == 2 * 1024 * 16 * (768 + 768) * 4 * 768
    step, persistent = cost_model.stepwise(anchor), cost_model.persistent(anchor)
    assert step["launches_forward"] == 1 + 2 * 1024 and step["barriers"] == 0
    assert persistent["launches_forward"] == 2 and persistent["barriers"] == 2 * 1024
    from fastrnn import _C
    plan = _C.persistent_plan(D=1, B=16, H=768, P=768, G=4, dtype="float16")
    assert (persistent["blocks"], persistent["units_per_block"]) == (plan["blocks"], plan["units_per_block"])
    # A weight the chip cannot hold: no persistent prediction, the stepwise path's instead.
    assert cost_model.persistent(cost_model.Case("lstm", T=100, B=8, H=4096, I=4096, dtype="float32")) is None
    out = tmp_path / "cost.md"
    cost_model.main(["--out", str(out)])
    text = out.read_text()
    assert "| lstm T=1024 B=16 H=768 | float16 |" in text and text.count("\n") == 2 + 2 * len(cost_model.GPU_CASES) + 2
