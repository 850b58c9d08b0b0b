"""What the run writes: the machine header and the markdown table (stdout), results.json, speedup.png."""

from __future__ import annotations

import json
import os
import platform
import subprocess

import torch

import fastrnn


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fastrnn_commit() -> str | None:
    """The git commit of the fastrnn checkout being run (short hash, '+dirty' with uncommitted changes), or None
    outside a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastrnn.__file__)))
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def machine_info(device: str) -> dict:
    info = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "fastrnn": fastrnn.backend_info(),
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["torch_cuda"] = torch.version.cuda
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


def print_header(info: dict, device: str, commit: str | None, ceilings: dict) -> None:
    print(f"# fastrnn vs torch.nn on {device.upper()}\n")
    if device == "cuda":
        print(f"- GPU: {info['gpu']} (torch CUDA {info['torch_cuda']})")
    print(f"- machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, torch threads: {info['torch_threads']}, "
          f"CPU capability: {info['cpu_capability']}")
    if "load_average" in info:
        print(f"- load average at start (1/5/15 min): {' / '.join(map(str, info['load_average']))}")
        if device == "cpu" and info["load_average"][0] >= info["logical_cpus"]:
            print("- WARNING: the machine is busy; timings will be noisy (a parallel region waits for its slowest "
                  "thread, and a descheduled thread stalls every step); prefer a quiet machine, or --threads 1")
    print(f"- python {info['python']}, torch {info['torch']}, fastrnn commit {commit or 'unknown'}")
    print(f"- {backend_summary(info['fastrnn'])}")
    for dtype, c in ceilings.items():
        print(f"- {dtype} GEMM ceiling: {c['gflops']:.1f} GFLOP/s ({c['what']}; best run, median "
              f"{c['median_gflops']:.1f})")
    print(flush=True)


COLUMNS = ("case", "dtype", "mode", "impl", "ms", "vs torch", "GFLOP/s", "% ceil", "peak MB", "check")
_NUMERIC = {4, 5, 6, 7, 8}


def _ms(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def _rate(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2g}"


def table_row(r: dict) -> list[str]:
    timed = r["median_ms"] is not None
    dash = "-"
    return [
        r["label"], r["dtype"], r["mode"], r["impl"],
        _ms(r["median_ms"]) if timed else dash,
        f"{r['speedup_vs_torch']:.2f}x" if timed else dash,
        _rate(r["gflops"]) if timed else dash,
        f"{r['pct_of_ceiling']:.0f}%" if timed else dash,
        f"{r['peak_mem_bytes'] / 2**20:.0f}" if r["peak_mem_bytes"] is not None else dash,
        "ok" if r["status"] == "ok" else f"**{r['status']}**",
    ]


def markdown_table(records: list[dict]) -> str:
    rows = [list(COLUMNS)] + [table_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in _NUMERIC else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    lines = [line(rows[0]),
             "|" + "|".join(("-" * (w + 1) + ":") if i in _NUMERIC else ("-" * (w + 2))
                            for i, w in enumerate(widths)) + "|"]
    lines += [line(row) for row in rows[1:]]
    return "\n".join(lines)


def print_table(records: list[dict]) -> None:
    print(markdown_table(records))
    print()
    print("ms: median per implementation; vs torch: median over rounds of torch ms / impl ms (>1: faster than "
          "torch.nn), the implementations alternated round by round.")
    print("GFLOP/s: forward = 2*T*B*(I_l+H)*G*H per layer and direction (I_l = I, then D*H), training = 3x "
          "forward; % ceil: of the GEMM ceiling above. peak MB: see benchmarks/memory.py.")
    for r in records:
        if r["status"] != "ok":
            print(f"- {r['status']}: {r['label']} {r['mode']} {r['impl']}: {r['detail']}")
    print(flush=True)


def write_json(path: str, info: dict, commit: str | None, settings: dict, ceilings: dict, records: list[dict],
               lm: dict | None) -> None:
    document = {"machine": info, "torch": torch.__version__, "fastrnn_commit": commit, "settings": settings,
                "gemm_ceiling": ceilings, "records": records, "lm": lm}
    with open(path, "w") as f:
        json.dump(document, f, indent=2)
        f.write("\n")


def plot_speedups(path: str, records: list[dict], title: str) -> None:
    """speedup.png: per case (grouped by cell) and mode, each implementation's speedup vs torch.nn (log scale),
    with a line at 1.0. Rows that failed the check are drawn as a red x at 1.0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    modes = list(dict.fromkeys(r["mode"] for r in records))
    impls = [i for i in dict.fromkeys(r["impl"] for r in records) if i != "torch"]
    fig, axes = plt.subplots(len(modes), 1, figsize=(max(6.0, 1.1 * _case_count(records) + 2), 3.2 * len(modes)),
                             squeeze=False)
    width = 0.8 / max(1, len(impls))
    for ax, mode in zip(axes[:, 0], modes):
        rows = [r for r in records if r["mode"] == mode]
        cases = list(dict.fromkeys((r["label"], r["dtype"]) for r in rows))
        for k, impl in enumerate(impls):
            for x, case in enumerate(cases):
                r = next((r for r in rows if (r["label"], r["dtype"]) == case and r["impl"] == impl), None)
                if r is None:
                    continue
                pos = x - 0.4 + width * (k + 0.5)
                if r["speedup_vs_torch"] is None:
                    ax.plot([pos], [1.0], "x", color="red", markersize=9)
                else:
                    ax.bar(pos, r["speedup_vs_torch"], width, color=f"C{k}", label=impl if x == 0 else None)
        ax.axhline(1.0, color="black", linewidth=1)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_yticks([v for v in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16) if _in_range(rows, v)])
        ax.set_xticks(range(len(cases)))
        ax.set_xticklabels([_short(label) + ("" if len(_dtypes(rows)) == 1 else f"\n{dtype}")
                            for label, dtype in cases], fontsize=7)
        ax.set_ylabel("speedup vs torch.nn")
        ax.set_title(f"{title}: {mode}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _case_count(records: list[dict]) -> int:
    return len(dict.fromkeys((r["label"], r["dtype"]) for r in records))


def _short(label: str) -> str:
    """'LSTM T=100 B=64 I=512 H=512 bidir' -> three lines: the cell, T and B, the rest."""
    words = label.split()
    return "\n".join((words[0], " ".join(words[1:3]), " ".join(words[3:])))


def _dtypes(rows: list[dict]) -> set:
    return {r["dtype"] for r in rows}


def _in_range(rows: list[dict], value: float) -> bool:
    """Whether a tick at `value` falls within the plotted speedups (1 always does)."""
    speedups = [r["speedup_vs_torch"] for r in rows if r["speedup_vs_torch"]] + [1.0]
    return min(speedups) / 1.5 <= value <= max(speedups) * 1.5

