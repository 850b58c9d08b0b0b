"""What the run prints: the machine header, the markdown table, the JSON file."""

from __future__ import annotations

import json
import os
import platform

import torch

import fastrnn

from .configs import DISPLAY


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fastrnn": fastrnn.backend_info(),
    }
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info


def backend_summary(b: dict) -> str:
    if not b["extension_loaded"]:
        return (f"fastrnn {b['version']}: extension NOT loaded ({b['extension_error']}); "
                "fastrnn runs its pure-PyTorch reference")
    archs = ", ".join(b["cuda_archs"]) or "none"
    return (f"fastrnn {b['version']}: extension loaded, built with torch {b['built_with_torch']}; "
            f"CPU kernels: {'yes' if b['cpu_kernels'] else 'no'}; CUDA kernels: "
            f"{'yes' if b['cuda_kernels'] else 'no'} (compiled for: {archs})")


def print_header(info: dict, ceiling: tuple[float, float], ceiling_desc: str) -> None:
    print("# fastrnn vs torch.nn, CPU, float32\n")
    print(f"- machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, torch threads: {info['torch_threads']}, "
          f"CPU capability: {info['cpu_capability']}")
    if "load_average" in info:
        print(f"- load average at start (1/5/15 min): {' / '.join(map(str, info['load_average']))}")
        if info["load_average"][0] >= info["logical_cpus"]:
            print("- WARNING: the machine is busy; timings will be noisy (a parallel region waits for its slowest "
                  "thread, and a descheduled thread stalls every step); prefer a quiet machine, or --threads 1")
    print(f"- python {info['python']}, torch {info['torch']}")
    print(f"- {backend_summary(info['fastrnn'])}")
    print(f"- fp32 GEMM ceiling: {ceiling[0]:.1f} GFLOP/s ({ceiling_desc}; best run, median {ceiling[1]:.1f})")
    print(flush=True)


COLUMNS = ("cell", "T", "B", "I", "H", "layers", "bidir", "mode", "torch ms", "fastrnn ms", "speedup",
           "torch GFLOP/s", "fastrnn GFLOP/s", "torch % ceil", "fastrnn % ceil", "pairs", "correct")


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def table_row(r: dict) -> list[str]:
    timed = r["status"] == "ok"
    dash = "-"
    return [
        DISPLAY[r["cell"]], str(r["T"]), str(r["B"]), str(r["I"]), str(r["H"]), str(r["layers"]),
        "yes" if r["bidir"] else "no", r["mode"],
        _ms(r["torch_s"]) if timed else dash,
        _ms(r["fastrnn_s"]) if timed else dash,
        f"{r['speedup']:.2f}x" if timed else dash,
        _rate(r["torch_gflops"]) if timed else dash,
        _rate(r["fastrnn_gflops"]) if timed else dash,
        f"{r['torch_pct_ceiling']:.0f}%" if timed else dash,
        f"{r['fastrnn_pct_ceiling']:.0f}%" if timed else dash,
        str(r["pairs"]) if timed else dash,
        "ok" if r["status"] == "ok" else f"**{r['status']}**",
    ]


def print_table(records: list[dict]) -> None:
    rows = [list(COLUMNS)] + [table_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    numeric = set(range(1, 6)) | set(range(8, 16))

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in numeric else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    print(line(rows[0]))
    print("|" + "|".join(("-" * (w + 1) + ":") if i in numeric else ("-" * (w + 2))
                         for i, w in enumerate(widths)) + "|")
    for row in rows[1:]:
        print(line(row))
    print()
    print("speedup: median over pairs of torch ms / fastrnn ms (>1: fastrnn faster); ms: median per implementation.")
    print("GFLOP/s: forward = 2*T*B*(I_l+H)*G*H per layer and direction (I_l = I, then D*H), training = 3x forward;"
          " % ceil: of the fp32 GEMM ceiling above.")
    for r in records:
        if r["status"] != "ok":
            print(f"- {r['status']}: {r['label']} {r['mode']}: {r['detail']}")
    print(flush=True)


def write_json(path: str, info: dict, settings: dict, ceiling: dict, records: list[dict]) -> None:
    with open(path, "w") as f:
        json.dump({"machine": info, "settings": settings, "gemm_ceiling": ceiling, "records": records}, f, indent=2)
        f.write("\n")
