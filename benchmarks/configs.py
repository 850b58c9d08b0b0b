"""The benchmark cases, and the one FLOP count every GFLOP/s figure comes from."""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Gates per cell (G): how many H-wide blocks the gate GEMMs produce.
GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
DISPLAY = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN-tanh", "rnn_relu": "RNN-relu"}
CELLS = tuple(GATES)
MODES = ("inference", "training")

# A training step (forward + backward with input and weight gradients) is counted as 3 forwards:
# backward does two GEMMs (data and weight gradients) for every forward GEMM.
TRAINING_FLOP_FACTOR = 3


@dataclass(frozen=True)
class Case:
    """One shape of one cell. Input is [T, B, I] (time-major); hidden size H."""

    cell: str  # a key of GATES
    T: int
    B: int
    I: int  # noqa: E741  (the project's shape letter)
    H: int
    layers: int = 1
    bidir: bool = False

    @property
    def D(self) -> int:
        return 2 if self.bidir else 1

    def label(self) -> str:
        extra = (f" L={self.layers}" if self.layers > 1 else "") + (" bidir" if self.bidir else "")
        return f"{DISPLAY[self.cell]} T={self.T} B={self.B} I={self.I} H={self.H}{extra}"

    def as_dict(self) -> dict:
        return asdict(self)


def forward_flops(case: Case) -> float:
    """FLOPs of one forward pass: the input and recurrent GEMMs, 2*T*B*(I_l + H)*G*H per layer and direction.

    I_l is I for the first layer and D*H above it. Biases and the pointwise gate math are not counted.
    """
    G = GATES[case.cell]
    total = 0
    for layer in range(case.layers):
        in_features = case.I if layer == 0 else case.D * case.H
        total += case.D * 2 * case.T * case.B * (in_features + case.H) * G * case.H
    return float(total)


def flops(case: Case, mode: str) -> float:
    """FLOPs of one run of `mode` ("inference": a forward; "training": forward + backward)."""
    return forward_flops(case) * (TRAINING_FLOP_FACTOR if mode == "training" else 1)


LARGE = dict(T=100, B=64, I=512, H=512)  # the classic configuration of RNN benchmarks
SMALL = dict(T=100, B=8, I=128, H=128)

# The full CPU grid, in table order. --cells filters it.
CASES = (
    Case("lstm", **LARGE),
    Case("lstm", **SMALL),
    Case("lstm", **SMALL, layers=2),
    Case("lstm", **SMALL, bidir=True),
    Case("lstm", **LARGE, layers=2),
    # A case issue 15 measured at 0.82-0.85x for inference (torch.nn's oneDNN LSTM is strongest here).
    Case("lstm", T=50, B=16, I=256, H=256, layers=2, bidir=True),
    Case("gru", **LARGE),
    Case("gru", **SMALL),
    Case("gru", **SMALL, layers=2),
    Case("gru", **SMALL, bidir=True),
    Case("gru", **LARGE, bidir=True),
    Case("rnn_tanh", **LARGE),
    Case("rnn_tanh", **SMALL),
    Case("rnn_relu", **LARGE),
    Case("rnn_relu", **SMALL),
)

# --quick: one case per cell, the classic configuration for LSTM; small enough that the pure-PyTorch
# reference is timed too and the whole run (with the memory subprocesses) stays within a few minutes on
# 2 CPU cores.
QUICK_CASES = (
    Case("lstm", **LARGE),
    Case("gru", T=50, B=16, I=256, H=256),
    Case("rnn_tanh", T=50, B=16, I=256, H=256),
    Case("rnn_relu", T=50, B=8, I=128, H=128, bidir=True),
)

# Issue 3's GPU grid: T = 100, B in {1, 8, 64, 256}, H = I in {128, 512, 1024}, for each cell.
GPU_CASES = tuple(Case(cell, T=100, B=B, I=H, H=H) for cell in CELLS
                  for B in (1, 8, 64, 256) for H in (128, 512, 1024))
# The published anchor shape (run in float16): cuDNN on an H100 about 2.0 ms forward, 5.2 ms training.
ANCHOR_CASES = (Case("lstm", T=1024, B=16, I=768, H=768),)
GRIDS = {"cpu": CASES, "quick": QUICK_CASES, "gpu": GPU_CASES, "anchor": ANCHOR_CASES}


def select_cases(cells, grid: str = "cpu") -> list[Case]:
    return [case for case in GRIDS[grid] if case.cell in cells]
