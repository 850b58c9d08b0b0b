"""The streaming and packed grids (`python -m benchmarks --grid streaming` / `--grid packed`): small calls and
packed batches, fastrnn against torch.nn, at 1 thread and at 2 (serving often runs one thread per request).

streaming: per case, `STEPS` steps of one layer called with T = 1 and its state fed back ("layer"), or of a cell
stepped in a Python loop ("cell"), batch B, H = I; inference (under torch.no_grad) or training (the steps with
autograd recording, then one backward of the outputs' and final state's sums). Reported in us per step.

packed: one call on a PackedSequence of B = 32 sequences of uniform random lengths in [1, T]
(enforce_sorted=False), T = 200, H = I = 256: fastrnn packed against fastrnn on the same batch padded to T (its
own padded time: what packing should save), and against torch.nn packed. Reported in us per time step.

Every case is first checked against torch.nn (same weights, same inputs: outputs, final states and, training,
every gradient); a mismatch marks it FAILED and it is not timed. Implementations are alternated round by round
(timing.time_rounds) and every ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn

from . import report
from .timing import time_rounds
from .workloads import TOLERANCE, compare

STEPS = 20
STREAMING_CELLS = ("lstm", "gru", "rnn_tanh")
STREAMING_B = (1, 8)
STREAMING_H = (64, 256, 512)
PACKED_CELLS = ("lstm", "gru")
PACKED = dict(T=200, B=32, H=256)
THREADS = (1, 2)
MODES = ("inference", "training")

_LAYERS = {"lstm": (nn.LSTM, fastrnn.LSTM), "gru": (nn.GRU, fastrnn.GRU), "rnn_tanh": (nn.RNN, fastrnn.RNN)}
_CELLS = {"lstm": (nn.LSTMCell, fastrnn.LSTMCell), "gru": (nn.GRUCell, fastrnn.GRUCell),
          "rnn_tanh": (nn.RNNCell, fastrnn.RNNCell)}


def _states(hidden) -> tuple:
    return hidden if isinstance(hidden, tuple) else (hidden,)


class _Steps:
    """STEPS steps of one model (a layer called with T = 1, or a cell), the state fed back; `run()` returns what
    the check compares. x: [STEPS, B, H]."""

    def __init__(self, model: nn.Module, x: torch.Tensor, kind: str, mode: str):
        self.model, self.x, self.kind, self.mode = model, x, kind, mode
        model.train(mode == "training")

    def reset(self) -> None:
        for p in self.model.parameters():
            p.grad = None

    def _loop(self):
        hidden, outputs = None, []
        for t in range(self.x.size(0)):
            if self.kind == "layer":
                y, hidden = self.model(self.x[t:t + 1], hidden)
            else:
                hidden = self.model(self.x[t], hidden)
                y = _states(hidden)[0]
            outputs.append(y)
        return outputs, _states(hidden)

    def run(self) -> dict:
        if self.mode == "inference":
            with torch.no_grad():
                outputs, states = self._loop()
        else:
            outputs, states = self._loop()
            (sum(y.sum() for y in outputs) + sum(s.sum() for s in states)).backward()
        results = {"last output": outputs[-1], **{f"state {i}": s for i, s in enumerate(states)}}
        if self.mode == "training":
            results.update({f"grad {n}": p.grad for n, p in self.model.named_parameters()})
        return results


class _PackedCall:
    """One call of a layer on a PackedSequence (packed=True) or on the same batch padded (packed=False)."""

    def __init__(self, model: nn.Module, padded: torch.Tensor, lengths: torch.Tensor, packed: bool, mode: str):
        self.model, self.padded, self.lengths, self.packed, self.mode = model, padded, lengths, packed, mode
        model.train(mode == "training")

    def reset(self) -> None:
        for p in self.model.parameters():
            p.grad = None

    def _call(self):
        if self.packed:
            output, hidden = self.model(pack_padded_sequence(self.padded, self.lengths, enforce_sorted=False))
            return output.data, _states(hidden)
        output, hidden = self.model(self.padded)
        return output, _states(hidden)

    def run(self) -> dict:
        if self.mode == "inference":
            with torch.no_grad():
                output, states = self._call()
        else:
            output, states = self._call()
            (output.sum() + sum(s.sum() for s in states)).backward()
        results = {"output": output, **{f"state {i}": s for i, s in enumerate(states)}}
        if self.mode == "training":
            results.update({f"grad {n}": p.grad for n, p in self.model.named_parameters()})
        return results


def _twins(classes, H: int, **kwargs):
    torch.manual_seed(0)
    reference = classes[0](H, H, **kwargs)
    twin = classes[1](H, H, **kwargs)
    twin.load_state_dict(reference.state_dict())
    return reference, twin


def _time(workloads: dict, rounds: int) -> tuple[dict, dict]:
    """Checks every workload against "torch", then times them; returns ({impl: median s}, {impl: ratio})."""
    expected = workloads["torch"].run()
    for name, w in workloads.items():
        if name != "torch":
            w.reset()
            error, where = compare(expected, w.run())
            if not error <= TOLERANCE[torch.float32]:
                raise AssertionError(f"{name} disagrees with torch.nn at {where}: scaled error {error:.2e}")
    times = time_rounds(workloads, rounds=rounds, warmup=1)
    return ({name: times.median(name) for name in workloads},
            {name: times.median_ratio("torch", name) for name in workloads})


def streaming_rows(rounds: int, threads=THREADS, cells=STREAMING_CELLS):
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for cell in cells:
            for kind, classes in (("layer", _LAYERS[cell]), ("cell", _CELLS[cell])):
                for B in STREAMING_B:
                    for H in STREAMING_H:
                        for mode in MODES:
                            row = dict(grid="streaming", cell=cell, kind=kind, B=B, H=H, mode=mode,
                                       threads=n_threads, steps=STEPS)
                            reference, twin = _twins(classes, H)
                            x = torch.randn(STEPS, B, H, generator=torch.Generator().manual_seed(1))
                            try:
                                medians, ratios = _time({"torch": _Steps(reference, x, kind, mode),
                                                         "fastrnn": _Steps(twin, x, kind, mode)}, rounds)
                            except AssertionError as e:
                                yield dict(row, status="FAILED", detail=str(e))
                                continue
                            yield dict(row, status="ok", torch_us_per_step=1e6 * medians["torch"] / STEPS,
                                       fastrnn_us_per_step=1e6 * medians["fastrnn"] / STEPS,
                                       speedup_vs_torch=ratios["fastrnn"])


def packed_rows(rounds: int, threads=THREADS, cells=PACKED_CELLS):
    T, B, H = PACKED["T"], PACKED["B"], PACKED["H"]
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for cell in cells:
            for mode in MODES:
                generator = torch.Generator().manual_seed(2)
                lengths = torch.randint(1, T + 1, (B,), generator=generator)
                lengths[0] = T  # the padded batch is T long
                padded = torch.randn(T, B, H, generator=generator)
                reference, twin = _twins(_LAYERS[cell], H)
                row = dict(grid="packed", cell=cell, T=T, B=B, H=H, mode=mode, threads=n_threads,
                           real_tokens=float(lengths.sum()) / (T * B))
                try:
                    medians, ratios = _time({"torch": _PackedCall(reference, padded, lengths, True, mode),
                                             "fastrnn": _PackedCall(twin, padded, lengths, True, mode)}, rounds)
                except AssertionError as e:
                    yield dict(row, status="FAILED", detail=str(e))
                    continue
                # fastrnn packed against its own padded run, alternated in the same way.
                own = time_rounds({"padded": _PackedCall(twin, padded, lengths, False, mode),
                                   "packed": _PackedCall(twin, padded, lengths, True, mode)}, rounds=rounds, warmup=1)
                yield dict(row, status="ok", torch_packed_us_per_step=1e6 * medians["torch"] / T,
                           fastrnn_packed_us_per_step=1e6 * medians["fastrnn"] / T,
                           fastrnn_padded_us_per_step=1e6 * own.median("padded") / T,
                           speedup_vs_torch=ratios["fastrnn"],
                           packed_over_padded=statistics.median(p / q for p, q in zip(own.times["packed"],
                                                                                      own.times["padded"])))


def _print_streaming(rows) -> None:
    print("| threads | cell | call | B | H | mode | torch.nn us/step | fastrnn us/step | speedup |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN-tanh"}[r["cell"]] + ("Cell loop" if r["kind"] == "cell"
                                                                                 else " T=1 calls")
        if r["status"] != "ok":
            print(f"| {r['threads']} | {name} | | {r['B']} | {r['H']} | {r['mode']} | {r['status']}: {r['detail']} |")
            continue
        print(f"| {r['threads']} | {name} | | {r['B']} | {r['H']} | {r['mode']} | {r['torch_us_per_step']:.0f} | "
              f"{r['fastrnn_us_per_step']:.0f} | {r['speedup_vs_torch']:.2f}x |")


def _print_packed(rows) -> None:
    print("| threads | cell | mode | real tokens | torch.nn packed us/step | fastrnn padded us/step | "
          "fastrnn packed us/step | packed / own padded | speedup vs torch.nn packed |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["status"] != "ok":
            print(f"| {r['threads']} | {r['cell']} | {r['mode']} | {r['status']}: {r['detail']} |")
            continue
        print(f"| {r['threads']} | {r['cell'].upper()} | {r['mode']} | {100 * r['real_tokens']:.0f}% | "
              f"{r['torch_packed_us_per_step']:.0f} | {r['fastrnn_padded_us_per_step']:.0f} | "
              f"{r['fastrnn_packed_us_per_step']:.0f} | {r['packed_over_padded']:.2f} | "
              f"{r['speedup_vs_torch']:.2f}x |")


def main(grid: str, args) -> int:
    """Runs the grid, prints its table, writes results.json into args.out; 1 if any case failed its check."""
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    rounds = args.repeats
    threads = (args.threads,) if args.threads is not None else THREADS
    rows = []
    generate = streaming_rows if grid == "streaming" else packed_rows
    cells = [c for c in (STREAMING_CELLS if grid == "streaming" else PACKED_CELLS) if c in args.cells]
    for row in generate(rounds, threads, cells):
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    (_print_streaming if grid == "streaming" else _print_packed)(rows)
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as f:
        json.dump({"machine": report.machine_info("cpu"), "fastrnn_commit": report.fastrnn_commit(),
                   "grid": grid, "rounds": rounds, "rows": rows}, f, indent=1)
    print(f"total time: {time.perf_counter() - started:.0f} s; wrote {path}")
    return 0 if all(r["status"] == "ok" for r in rows) else 1
