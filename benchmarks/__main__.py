"""python -m benchmarks: fastrnn against torch.nn, its pure-PyTorch reference and that reference compiled.

For every case (cell, sizes, dtype) and mode (inference, training step): build every implementation with the
same weights and inputs, check each one's outputs and gradients against torch.nn's (a mismatch or an error
marks that row FAILED/ERROR and it is never timed), then time the implementations alternated round by
round, measure each one's peak memory, and report. Writes a markdown table to stdout (progress on stderr)
and, into --out DIR, results.json (every record, the machine, torch version and fastrnn commit),
speedup.png (speedup vs torch.nn per case) and, with the language-model benchmark, lm_loss.png.
Exits 1 if any row failed its check or raised (the compiled reference excepted: it runs "where it compiles").

    python -m benchmarks --quick              # a small grid, a few minutes on 2 CPU cores (the README's main job)
    python -m benchmarks                      # the full grid, the compiled reference included (long on a CPU)
    python -m benchmarks --cells lstm --modes training --compare fastrnn,torch --repeats 30
    python -m benchmarks --device cuda --grid gpu --dtypes bfloat16 --cells gru --compare fastrnn,torch
    python -m benchmarks --device cuda --grid anchor --dtypes float16      # the published anchor shape
    python -m benchmarks --grid streaming     # T=1 calls and cell loops, 1 and 2 threads (benchmarks/small_calls.py)
    python -m benchmarks --grid packed        # PackedSequence: vs fastrnn padded and vs torch.nn packed

On CUDA, --tf32 on|off sets torch.backends.cudnn.allow_tf32 for the float32 rows: torch.nn's cuDNN RNNs
follow it, and so do fastrnn's float32 GEMMs (csrc/cuda/layers.cu); timing uses CUDA events.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from . import report
from .configs import CELLS, GRIDS, MODES, Case, flops, select_cases
from .memory import cpu_peak_bytes, cuda_peak_bytes
from .timing import cpu_clock, cuda_clock, gemm_ceiling, no_sync, time_rounds
from .workloads import BASELINE, IMPLS, TOLERANCE, compare, make_workloads

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CEILING_N = 2048
DEFAULT_OUT = os.path.join("benchmarks", "out")

# Per setting: (full run, --quick). The correctness run counts as the first warm-up run.
WARMUP = (2, 1)
REPEATS = (20, 5)
MAX_SECONDS = (60.0, 2.0)  # per row: no new round after this, once timing.MIN_ROUNDS are done
LM_STEPS = (100, 40)
# The grids of benchmarks/small_calls.py (their own tables), and their default rounds.
SMALL_CALL_GRIDS = ("streaming", "packed")
SMALL_CALL_REPEATS = 7
# The compiled reference takes about a minute per shape and mode to compile on a CPU: not in --quick.
QUICK_IMPLS = ("fastrnn", "torch", "reference")


def _list_arg(choices):
    def parse(text: str) -> list[str]:
        items = [item.strip().lower().replace("-", "_") for item in text.split(",") if item.strip()]
        unknown = [item for item in items if item not in choices]
        if unknown or not items:
            raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(choices)}; got {text!r}")
        return items
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"),
                   help="where every implementation runs (default: cuda when torch sees a GPU, else cpu)")
    p.add_argument("--quick", action="store_true",
                   help=f"the small grid ({len(GRIDS['quick'])} cases), implementations {','.join(QUICK_IMPLS)}, "
                        f"warm-up {WARMUP[1]}, at most {REPEATS[1]} rounds and about {MAX_SECONDS[1]:g} s per row, "
                        f"{LM_STEPS[1]} language-model steps")
    p.add_argument("--grid", choices=tuple(GRIDS) + SMALL_CALL_GRIDS,
                   help="cpu: the full CPU grid (default); quick: --quick's; gpu: issue 3's GPU grid; "
                        "anchor: LSTM T=1024 B=16 H=768; streaming: T=1 calls and cell loops (B 1, 8; H 64, 256, "
                        "512); packed: PackedSequence vs padded vs torch.nn packed (benchmarks/small_calls.py; "
                        "both at 1 and 2 threads unless --threads, CPU only)")
    p.add_argument("--cells", type=_list_arg(CELLS), default=list(CELLS),
                   help=f"comma list of {', '.join(CELLS)} (default: all)")
    p.add_argument("--dtypes", type=_list_arg(DTYPES), default=["float32"],
                   help=f"comma list of {', '.join(DTYPES)} (default float32)")
    p.add_argument("--modes", type=_list_arg(MODES), default=list(MODES),
                   help=f"comma list of {', '.join(MODES)} (default: both)")
    p.add_argument("--compare", type=_list_arg(IMPLS),
                   help=f"implementations, comma list of {', '.join(IMPLS)} (torch.nn always runs: it is the "
                        f"baseline; default: all, --quick: {','.join(QUICK_IMPLS)})")
    p.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                   help=f"where results.json and the plots go (default {DEFAULT_OUT})")
    p.add_argument("--repeats", type=int, help=f"timed rounds per row, at most (default {REPEATS[0]}, "
                                               f"--quick {REPEATS[1]})")
    p.add_argument("--warmup", type=int, help=f"untimed runs of each implementation before timing, the "
                                              f"correctness run included (default {WARMUP[0]}, --quick {WARMUP[1]})")
    p.add_argument("--max-time", type=float, help=f"seconds per row after which no new round starts (default "
                                                  f"{MAX_SECONDS[0]:g}, --quick {MAX_SECONDS[1]:g})")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--lm-steps", type=int,
                   help=f"steps of the language-model benchmark; 0 skips it (default {LM_STEPS[0]}, "
                        f"--quick {LM_STEPS[1]})")
    p.add_argument("--tf32", choices=("on", "off"),
                   help="CUDA float32 only: torch.backends.cudnn.allow_tf32, which torch.nn and fastrnn follow")
    args = p.parse_args(argv)
    q = int(args.quick)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.grid = args.grid or ("quick" if args.quick else "cpu")
    small_calls_grid = args.grid in SMALL_CALL_GRIDS
    args.repeats = (SMALL_CALL_REPEATS if small_calls_grid else REPEATS[q]) if args.repeats is None else args.repeats
    args.warmup = WARMUP[q] if args.warmup is None else args.warmup
    args.max_time = MAX_SECONDS[q] if args.max_time is None else args.max_time
    args.lm_steps = LM_STEPS[q] if args.lm_steps is None else args.lm_steps
    compare_impls = args.compare or (QUICK_IMPLS if args.quick else IMPLS)
    args.compare = [BASELINE] + [impl for impl in compare_impls if impl != BASELINE]
    if args.repeats < 1 or args.warmup < 1 or args.lm_steps < 0 or (args.threads is not None and args.threads < 1):
        p.error("--repeats, --warmup and --threads must be at least 1, --lm-steps at least 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here")
    if small_calls_grid and args.device != "cpu":
        p.error(f"--grid {args.grid} runs on the CPU only")
    if args.tf32 is not None and (args.device != "cuda" or "float32" not in args.dtypes):
        p.error("--tf32 applies to --device cuda with float32 in --dtypes only")
    return args


def _clock(device: str):
    return cuda_clock if device == "cuda" else cpu_clock


def _record(case: Case, mode: str, impl: str, dtype: str, args) -> dict:
    return {"cell": case.cell, "T": case.T, "B": case.B, "I": case.I, "H": case.H, "layers": case.layers,
            "bidirectional": case.bidir, "dtype": dtype, "device": args.device, "mode": mode, "impl": impl,
            "label": case.label(), "tf32": args.tf32, "flops": flops(case, mode), "status": "ok", "detail": "",
            "correct": None, "max_error": None, "tolerance": None, "median_ms": None, "speedup_vs_torch": None,
            "gflops": None, "pct_of_ceiling": None, "peak_mem_bytes": None, "rounds": 0, "times_ms": []}


def _error_text(e: Exception) -> str:
    return f"{type(e).__name__}: {e}".splitlines()[0][:300]


def run_case(case: Case, mode: str, dtype_name: str, args, ceiling: float, models=None) -> list[dict]:
    """One case in one mode: check every implementation against torch.nn, time those that pass, measure
    their memory. Returns one record per implementation (status ok, FAILED or ERROR). `models` (as
    workloads.make_models returns) replaces the implementations built from args.compare (for tests)."""
    dtype = DTYPES[dtype_name]
    impls = list(models) if models is not None else args.compare
    records = {impl: _record(case, mode, impl, dtype_name, args) for impl in impls}
    # torch.nn's cuDNN RNNs run float32 in TF32 unless told not to (cudnn.allow_tf32 is True by default).
    tf32 = args.device == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    tolerance = TOLERANCE["tf32" if tf32 else dtype]
    try:
        workloads = make_workloads(case, mode, impls, device=args.device, dtype=dtype, models=models)
        workloads[BASELINE].reset()
        expected = workloads[BASELINE].run()  # also the first warm-up run of each
    except Exception as e:  # torch.nn itself cannot run this case: nothing to check against
        for r in records.values():
            r.update(status="ERROR", detail=f"torch.nn or the set-up raised: {_error_text(e)}")
        return list(records.values())
    records[BASELINE].update(correct=True, max_error=0.0, tolerance=tolerance)
    passed = {BASELINE: workloads[BASELINE]}
    for impl in impls:
        if impl == BASELINE:
            continue
        r = records[impl]
        try:
            workloads[impl].reset()
            error, where = compare(expected, workloads[impl].run())
        except Exception as e:  # reported in the table and the exit code, never hidden
            r.update(status="ERROR", correct=False, detail=_error_text(e))
            continue
        r.update(max_error=error, tolerance=tolerance, correct=error <= tolerance)
        if r["correct"]:
            passed[impl] = workloads[impl]
        else:
            r.update(status="FAILED", detail=f"{where}: scaled error {error:.2e} > tolerance {tolerance:.0e}")
    times = time_rounds(passed, rounds=args.repeats, warmup=args.warmup - 1, max_seconds=args.max_time,
                        clock=_clock(args.device))
    for impl in passed:
        r = records[impl]
        median_s = times.median(impl)
        r.update(median_ms=1e3 * median_s, speedup_vs_torch=times.median_ratio(BASELINE, impl),
                 gflops=r["flops"] / median_s / 1e9, rounds=times.rounds,
                 times_ms=[1e3 * t for t in times.times[impl]])
        r["pct_of_ceiling"] = 100 * r["gflops"] / ceiling
    if not args.no_memory:
        try:
            if args.device == "cuda":
                peaks = {impl: cuda_peak_bytes(w) for impl, w in passed.items()}
            elif models is None:
                peaks = cpu_peak_bytes(case, mode, list(passed), dtype_name, args.threads)
            else:  # implementations supplied in-process cannot be rebuilt in a fresh process
                peaks = {}
            for impl, peak in peaks.items():
                records[impl]["peak_mem_bytes"] = peak
        except Exception as e:  # the memory figures are missing, the timings stand
            for impl in passed:
                records[impl]["detail"] = f"peak memory not measured: {_error_text(e)}"
    return list(records.values())


def _failed(r: dict) -> bool:
    return r["status"] == "FAILED" or (r["status"] == "ERROR" and r["impl"] != "compiled")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.grid in SMALL_CALL_GRIDS:
        from . import small_calls

        return small_calls.main(args.grid, args)
    if args.tf32 is not None:
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    info = report.machine_info(args.device)
    commit = report.fastrnn_commit()
    sync = torch.cuda.synchronize if args.device == "cuda" else no_sync
    ceilings = {}
    for name in args.dtypes:
        best, median = gemm_ceiling(CEILING_N, device=args.device, dtype=DTYPES[name], sync=sync)
        ceilings[name] = {"gflops": best, "median_gflops": median,
                          "what": f"torch.mm {CEILING_N}x{CEILING_N}x{CEILING_N} {name} on {args.device}"}
    report.print_header(info, args.device, commit, ceilings)

    rows = [(case, mode, dtype) for dtype in args.dtypes for case in select_cases(args.cells, args.grid)
            for mode in args.modes]
    records = []
    from tqdm import tqdm

    with tqdm(rows, desc="benchmarks", unit="row", file=sys.stderr, dynamic_ncols=True) as bar:
        for case, mode, dtype in bar:
            bar.set_postfix_str(f"{case.label()} {dtype} {mode}")
            rs = run_case(case, mode, dtype, args, ceilings[dtype]["gflops"])
            fast = next((r for r in rs if r["impl"] == "fastrnn"), None)
            if fast is not None:
                summary = (f"fastrnn {fast['speedup_vs_torch']:.2f}x torch.nn" if fast["median_ms"] is not None
                           else f"fastrnn {fast['status']}: {fast['detail']}")
                bar.write(f"{case.label()} {dtype} {mode}: {summary}", file=sys.stderr)
            records.extend(rs)

    report.print_table(records)
    lm = None
    if args.lm_steps:
        from .lm import plot_losses, run_lm

        print(f"language model: training {args.lm_steps} steps with torch.nn.LSTM and fastrnn ...", file=sys.stderr)
        lm = run_lm(steps=args.lm_steps, device=args.device)
        plot_losses(os.path.join(args.out, "lm_loss.png"), lm)
        agree = {True: "agree", False: "**DISAGREE**", None: "not compared (GPU)"}[lm["losses_agree"]]
        print(f"End to end ({lm['model']}; batch {lm['batch']} x {lm['bptt']} steps, {lm['steps']} training "
              f"steps): torch.nn {lm['torch_step_ms']:.1f} ms/step, fastrnn {lm['fastrnn_step_ms']:.1f} ms/step "
              f"(speedup {lm['speedup']:.2f}x); final losses {lm['torch_losses'][-1]:.4f} vs "
              f"{lm['fastrnn_losses'][-1]:.4f}: {agree} (relative difference "
              f"{lm['final_loss_relative_difference']:.1e})\n")
    settings = {k: v for k, v in vars(args).items()}
    path = os.path.join(args.out, "results.json")
    report.write_json(path, info, commit, settings, ceilings, records, lm)
    report.plot_speedups(os.path.join(args.out, "speedup.png"), records,
                         f"fastrnn vs torch.nn, {args.device}")
    print(f"total time: {time.perf_counter() - started:.0f} s; wrote {path}, speedup.png"
          + (", lm_loss.png" if lm else "") + f" in {args.out}")
    ok = not any(_failed(r) for r in records) and (lm is None or lm["losses_agree"] is not False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
