"""python -m benchmarks: fastrnn against torch.nn, on the CPU in float32 (default) or on a GPU.

For every case and mode: build both models with the same weights and inputs, check that fastrnn's
results match torch.nn's (a mismatch or an error marks the row FAILED/ERROR and it is not timed),
then time the two in alternating pairs. Prints a markdown table on stdout, progress on stderr.
Exits 1 if any row failed the correctness check or raised.

    python -m benchmarks                      # all default cases, both modes
    python -m benchmarks --quick              # fewer repetitions, same cases (a few minutes on 2 cores)
    python -m benchmarks --cells lstm --modes training --repeats 30 --json out.json
    python -m benchmarks --device cuda --grid gpu --dtype bfloat16 --cells gru   # issue 3's GPU grid, one part
    python -m benchmarks --device cuda --grid anchor --dtype float16             # the published anchor shape

On CUDA, --tf32 on|off sets torch.backends.cudnn.allow_tf32 for the float32 rows: torch.nn's cuDNN RNNs
follow it, and so do fastrnn's float32 GEMMs (csrc/cuda/layers.cu); timing synchronizes the device.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import report
from .configs import CELLS, DEFAULT_CELLS, GRIDS, MODES, Case, flops, select_cases
from .timing import gemm_ceiling, no_sync, time_pairs
from .workloads import TOLERANCE, compare, make_pair

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
CEILING_N = 2048

# Repetitions: (full run, --quick). The correctness run counts as the first warm-up run.
WARMUP = (2, 1)
REPEATS = (20, 3)
MAX_SECONDS = (60.0, 2.0)  # per row: no new pair after this, once timing.MIN_PAIRS are done


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
    p.add_argument("--quick", action="store_true",
                   help=f"fewer repetitions, same cases: warm-up {WARMUP[1]}, at most {REPEATS[1]} pairs "
                        f"and about {MAX_SECONDS[1]:g} s per row")
    p.add_argument("--cells", type=_list_arg(CELLS), default=list(DEFAULT_CELLS),
                   help=f"comma list of {', '.join(CELLS)} (default: {','.join(DEFAULT_CELLS)})")
    p.add_argument("--modes", type=_list_arg(MODES), default=list(MODES),
                   help=f"comma list of {', '.join(MODES)} (default: both)")
    p.add_argument("--repeats", type=int, help=f"timed pairs per row, at most (default {REPEATS[0]}, "
                                               f"--quick {REPEATS[1]})")
    p.add_argument("--warmup", type=int, help=f"untimed runs of each implementation before timing, the "
                                              f"correctness run included (default {WARMUP[0]}, --quick {WARMUP[1]})")
    p.add_argument("--max-time", type=float, help=f"seconds per row after which no new pair starts (default "
                                                  f"{MAX_SECONDS[0]:g}, --quick {MAX_SECONDS[1]:g})")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both run (default cpu)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="default float32")
    p.add_argument("--grid", choices=tuple(GRIDS), default="cpu",
                   help="cpu: the CPU cases (default); gpu: issue 3's GPU grid; anchor: LSTM T=1024 B=16 H=768")
    p.add_argument("--tf32", choices=("on", "off"),
                   help="CUDA float32 only: torch.backends.cudnn.allow_tf32, which torch.nn and fastrnn follow")
    p.add_argument("--json", metavar="PATH", help="also write the settings and records as JSON to PATH")
    args = p.parse_args(argv)
    q = int(args.quick)
    args.repeats = REPEATS[q] if args.repeats is None else args.repeats
    args.warmup = WARMUP[q] if args.warmup is None else args.warmup
    args.max_time = MAX_SECONDS[q] if args.max_time is None else args.max_time
    if args.repeats < 1 or args.warmup < 1 or (args.threads is not None and args.threads < 1):
        p.error("--repeats, --warmup and --threads must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: torch sees no CUDA device here")
    if args.tf32 is not None and (args.device != "cuda" or args.dtype != "float32"):
        p.error("--tf32 applies to --device cuda --dtype float32 only")
    return args


def _sync(device: str):
    return torch.cuda.synchronize if device == "cuda" else no_sync


def run_case(case: Case, mode: str, args, ceiling: float) -> dict:
    """One table row: check, then time. Returns the record (status ok, FAILED or ERROR)."""
    dtype = DTYPES[args.dtype]
    # tf32: as asked with --tf32; None: torch's defaults.
    record = {**case.as_dict(), "label": case.label(), "mode": mode, "dtype": args.dtype, "device": args.device,
              "tf32": args.tf32, "flops": flops(case, mode), "status": "ok", "detail": ""}
    # torch.nn's cuDNN RNNs run float32 in TF32 unless told not to (cudnn.allow_tf32 is True by default).
    tf32 = args.device == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32
    tolerance = TOLERANCE["tf32" if tf32 else dtype]
    try:
        ref, fast = make_pair(case, mode, device=args.device, dtype=dtype)
        ref.reset()
        fast.reset()
        error, where = compare(ref.run(), fast.run())  # also the first warm-up run of each
        record.update(max_error=error, tolerance=tolerance)
        if not error <= tolerance:
            record.update(status="FAILED", detail=f"{where}: scaled error {error:.2e} > tolerance {tolerance:.0e}")
            return record
        times = time_pairs(ref, fast, pairs=args.repeats, warmup=args.warmup - 1, max_seconds=args.max_time,
                           sync=_sync(args.device))
    except Exception as e:  # reported in the table and the exit code, never hidden
        record.update(status="ERROR", detail=f"{type(e).__name__}: {e}".splitlines()[0])
        return record
    torch_s, fastrnn_s = times.median_first, times.median_second
    record.update(
        pairs=len(times.first), torch_s=torch_s, fastrnn_s=fastrnn_s, speedup=times.median_ratio,
        torch_gflops=record["flops"] / torch_s / 1e9, fastrnn_gflops=record["flops"] / fastrnn_s / 1e9,
        torch_times_s=times.first, fastrnn_times_s=times.second,
    )
    record["torch_pct_ceiling"] = 100 * record["torch_gflops"] / ceiling
    record["fastrnn_pct_ceiling"] = 100 * record["fastrnn_gflops"] / ceiling
    return record


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.tf32 is not None:
        torch.backends.cudnn.allow_tf32 = args.tf32 == "on"
    started = time.perf_counter()
    info = report.machine_info()
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    ceiling = gemm_ceiling(CEILING_N, device=args.device, dtype=DTYPES[args.dtype], sync=_sync(args.device))
    ceiling_desc = f"torch.mm {CEILING_N}x{CEILING_N}x{CEILING_N} {args.dtype} on {args.device}"
    report.print_header(info, ceiling, ceiling_desc)

    rows = [(case, mode) for case in select_cases(args.cells, args.grid) for mode in args.modes]
    records = []
    for i, (case, mode) in enumerate(rows, 1):
        t0 = time.perf_counter()
        r = run_case(case, mode, args, ceiling[0])
        summary = (f"torch {r['torch_s'] * 1e3:.1f} ms, fastrnn {r['fastrnn_s'] * 1e3:.1f} ms, "
                   f"speedup {r['speedup']:.2f}x" if r["status"] == "ok" else f"{r['status']}: {r['detail']}")
        print(f"[{i}/{len(rows)}] {case.label()} {mode}: {summary} ({time.perf_counter() - t0:.1f} s)",
              file=sys.stderr, flush=True)
        records.append(r)

    report.print_table(records)
    elapsed = time.perf_counter() - started
    print(f"total time: {elapsed:.0f} s")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "json"}
        ceiling_record = {"gflops": ceiling[0], "median_gflops": ceiling[1], "what": ceiling_desc}
        report.write_json(args.json, info, settings, ceiling_record, records)
        print(f"wrote {args.json}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
