"""fastrnn's benchmarks: `python -m benchmarks --help`.

Modules, one concern each:
    configs.py    the cases (cell, T, B, I, H, layers, bidirectional) and the FLOP count
    workloads.py  the torch.nn / fastrnn model pair of a case, the step that is timed, the correctness check
    timing.py     the alternating-pairs timing loop and the GEMM ceiling
    report.py     machine header, markdown table, JSON
    __main__.py   the command line: check, then time, every case and mode

Run from the repository root, with fastrnn installed (`pip install --no-build-isolation -e .`).
"""
