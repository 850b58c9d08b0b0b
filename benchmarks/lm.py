"""End to end: a small word-level language model trained with torch.nn.LSTM and after fastrnn.convert(model).

The model: an embedding, a two-layer LSTM (dropout between its layers), dropout, a linear decoder, trained
with truncated backpropagation through time on benchmarks/data/corpus.txt (25k words; see data/README.md).
Both copies start from the same weights and are trained in lockstep, one step each in alternating order;
each has its own random-number stream (saved and restored around its steps), so both draw the same
dropout masks as if trained alone with the same seed. fastrnn draws its dropout masks as torch.nn does on
the CPU, so there the two loss curves agree to rounding: the final losses within 0.1% is the check. (On a
GPU cuDNN draws its own masks and the curves only agree statistically: no check there.)

Reports each step's time (median over steps after the first few), the median per-step speedup, both loss
curves (lm.json inside results.json, and lm_loss.png).
"""

from __future__ import annotations

import collections
import copy
import os
import statistics
import time

import torch
from torch import nn

import fastrnn

CORPUS = os.path.join(os.path.dirname(__file__), "data", "corpus.txt")
VOCAB, EMBED, HIDDEN, LAYERS, DROPOUT = 2000, 128, 256, 2, 0.2
BPTT, BATCH, LR, CLIP = 35, 16, 1.0, 0.25
WARMUP_STEPS = 3  # not in the step-time medians
LOSS_AGREEMENT = 1e-3  # |fastrnn - torch| / torch of the final loss, on the CPU


def load_corpus(path: str = CORPUS, vocab: int = VOCAB) -> torch.Tensor:
    """The corpus as word ids: the vocab-1 most frequent lower-cased words, the rest one <unk> id (0)."""
    with open(path, encoding="utf-8") as f:
        words = f.read().lower().split()
    ids = {w: i + 1 for i, (w, _) in enumerate(collections.Counter(words).most_common(vocab - 1))}
    return torch.tensor([ids.get(w, 0) for w in words], dtype=torch.long)


class WordLM(nn.Module):
    def __init__(self, vocab: int = VOCAB):
        super().__init__()
        self.embed = nn.Embedding(vocab, EMBED)
        self.lstm = nn.LSTM(EMBED, HIDDEN, num_layers=LAYERS, dropout=DROPOUT)
        self.drop = nn.Dropout(DROPOUT)
        self.decoder = nn.Linear(HIDDEN, vocab)

    def forward(self, x, hidden=None):  # x [T, B] word ids -> logits [T, B, vocab]
        out, hidden = self.lstm(self.drop(self.embed(x)), hidden)
        return self.decoder(self.drop(out)), hidden


class Trainer:
    """One model's training state: optimizer, carried hidden state, its own RNG stream."""

    def __init__(self, model: nn.Module, seed: int, device):
        self.model, self.device = model.train(), device
        self.optimizer = torch.optim.SGD(model.parameters(), lr=LR)
        self.hidden = None
        self.rng = torch.Generator().manual_seed(seed).get_state()  # this model's CPU random stream
        self.losses: list[float] = []
        self.times: list[float] = []

    def step(self, x, y) -> None:
        saved = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        if self.hidden is not None:
            self.hidden = tuple(h.detach() for h in self.hidden)  # truncated BPTT
        logits, self.hidden = self.model(x, self.hidden)
        loss = nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.optimizer.step()
        value = loss.item()  # also waits for the device
        sync()
        self.times.append(time.perf_counter() - t0)
        self.losses.append(value)
        self.rng = torch.get_rng_state()
        torch.set_rng_state(saved)


def run_lm(steps: int = 60, device="cpu", seed: int = 0) -> dict:
    """Trains both copies for `steps` steps; returns the record (and whether the losses agree, on the CPU)."""
    device = torch.device(device)
    ids = load_corpus()
    n = ids.numel() // BATCH
    data = ids[: n * BATCH].view(BATCH, n).t().contiguous().to(device)  # [n, BATCH]: BATCH parallel streams
    torch.manual_seed(seed)
    reference_model = WordLM().to(device)
    twin = fastrnn.convert(copy.deepcopy(reference_model))
    trainers = {"torch": Trainer(reference_model, seed, device), "fastrnn": Trainer(twin, seed, device)}
    for step in range(steps):
        i = (step * BPTT) % (n - BPTT - 1)
        x, y = data[i:i + BPTT], data[i + 1:i + 1 + BPTT]
        order = ("torch", "fastrnn") if step % 2 == 0 else ("fastrnn", "torch")
        for name in order:
            trainers[name].step(x, y)
    t, f = trainers["torch"], trainers["fastrnn"]
    timed = slice(WARMUP_STEPS, None) if steps > WARMUP_STEPS else slice(None)
    final_diff = abs(f.losses[-1] - t.losses[-1]) / abs(t.losses[-1])
    record = {
        "model": f"embedding {EMBED}, LSTM {LAYERS}x{HIDDEN} (dropout {DROPOUT}), decoder to {VOCAB} words",
        "batch": BATCH, "bptt": BPTT, "steps": steps, "device": device.type, "seed": seed,
        "torch_losses": t.losses, "fastrnn_losses": f.losses,
        "torch_step_ms": 1e3 * statistics.median(t.times[timed]),
        "fastrnn_step_ms": 1e3 * statistics.median(f.times[timed]),
        "speedup": statistics.median(a / b for a, b in zip(t.times[timed], f.times[timed])),
        "final_loss_relative_difference": final_diff,
        "losses_agree": final_diff <= LOSS_AGREEMENT if device.type == "cpu" else None,
    }
    return record


def plot_losses(path: str, record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    steps = range(1, record["steps"] + 1)
    ax.plot(steps, record["torch_losses"], label=f"torch.nn.LSTM ({record['torch_step_ms']:.1f} ms/step)",
            linewidth=2.5, alpha=0.6)
    ax.plot(steps, record["fastrnn_losses"], "--", label=f"fastrnn.convert ({record['fastrnn_step_ms']:.1f} ms/step)")
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(f"word-level LM on {record['device']}: {record['model']}", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
