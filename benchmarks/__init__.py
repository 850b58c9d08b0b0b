"""fastrnn's benchmarks: `python -m benchmarks --help`.

Modules, one concern each:
    configs.py    the cases (cell, T, B, I, H, layers, bidirectional), the grids and the FLOP count
    workloads.py  the implementations of a case (torch.nn, fastrnn, reference, compiled reference), the step
                  that is timed, the correctness check
    timing.py     the timing loop (implementations alternated round by round), the clocks, the GEMM ceiling
    memory.py     peak memory of one step (CUDA allocator; on the CPU a fresh process's peak RSS)
    report.py     machine header, markdown table, results.json, speedup.png
    lm.py         end to end: a word-level LSTM language model, torch.nn vs fastrnn.convert, loss curves
    test_bench.py the pytest-benchmark entry point (pytest benchmarks/ --benchmark-only)
    __main__.py   the command line: check, then time, every case and mode

Run from the repository root, with fastrnn installed (`pip install --no-build-isolation -e .`).
"""
