"""The benchmark suite (python -m benchmarks) runs: a tiny run end to end on the CPU, and its argument checks.

Timing results are never asserted (the machines are shared and noisy); this only keeps the README's main
job from breaking unnoticed.
"""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks.__main__ import main, parse_args


def test_benchmark_runs_and_writes_records(tmp_path, capsys):
    path = tmp_path / "records.json"
    code = main(["--cells", "rnn_relu", "--modes", "inference,training", "--repeats", "1", "--warmup", "1",
                 "--max-time", "0", "--json", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "| RNN-relu |" in out
    records = json.loads(path.read_text())["records"]
    assert [r["status"] for r in records] == ["ok"] * 4, records
    assert {r["mode"] for r in records} == {"inference", "training"}
    assert all(r["device"] == "cpu" and r["dtype"] == "float32" for r in records)


def test_benchmark_gpu_grid_is_issue_3s():
    from benchmarks.configs import select_cases

    cases = select_cases(["lstm", "gru", "rnn_tanh"], "gpu")
    assert len(cases) == 3 * 4 * 3
    assert {(c.B, c.H) for c in cases} == {(B, H) for B in (1, 8, 64, 256) for H in (128, 512, 1024)}
    assert all(c.T == 100 and c.I == c.H for c in cases)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error given where torch sees no GPU")
def test_benchmark_cuda_without_gpu_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda"])
    assert "torch sees no CUDA device here" in capsys.readouterr().err


def test_benchmark_tf32_needs_cuda_float32(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--tf32", "on"])
    assert "--tf32 applies to --device cuda --dtype float32 only" in capsys.readouterr().err
