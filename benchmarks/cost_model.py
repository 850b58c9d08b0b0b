"""A cost model on paper for fastrnn's two CUDA paths, so that the first GPU run checks a prediction.

    python -m benchmarks.cost_model [--out FILE.md]

For every case of the GPU grid (benchmarks/configs.py GPU_CASES: LSTM, GRU, RNN-tanh; T = 100; B in
{1, 8, 64, 256}; H = I in {128, 512, 1024}) and the anchor (LSTM, T = 1024, B = 16, H = I = 768), in fp32
and bf16 (fp16 for the anchor, as published), it counts per path: FLOPs, launches, grid barriers and the bytes
each step moves, and predicts forward and forward+backward times on an H100 SXM from the figures in DEVICE
below. The persistent kernel's split is its real plan (fastrnn._C.persistent_plan, the code the kernel runs).

Nothing here has been measured on a GPU (none has been lent to this project); every rate below is a datasheet
figure or a published latency, named where it is set. The model is a floor-and-latency sum per step, not a
simulation: where the first GPU run (benchmarks/gpu_check.sh) disagrees by more than 2x, the model's
assumption for that term is what to look at first.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from .configs import ANCHOR_CASES, GPU_CASES

GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}

# H100 SXM5 (the anchor's published figures are on one; an H200 has the same SMs and clocks, more and faster HBM).
DEVICE = dict(
    sms=132,
    clock_hz=1.755e9,          # sustained boost under load (datasheet max 1.98 GHz)
    shared_bytes=232448,       # 227 KiB opt-in shared memory per block
    hbm_bytes_per_s=3.35e12,   # HBM3
    l2_bytes_per_s=5.5e12,     # aggregate L2 read bandwidth (published microbenchmarks: 5.5-7 TB/s)
    l2_bytes_per_clk_sm=64,    # one SM's share of L2 bandwidth
    fp32_fma_per_clk_sm=128,   # CUDA cores
    mma_fma_per_clk_sm=512,    # fp16/bf16 wmma/mma.sync, dense (half of wgmma's 1024, which this kernel does not use)
    mma_chain_clk=33,          # one dependent 16x16x16 wmma step (two m16n8k16 HMMAs)
    fma_chain_clk=4,           # one dependent FMA
    grid_sync_s=1.5e-6,        # cooperative-groups grid.sync over ~132 blocks (published: 1-3 us)
    block_sync_clk=40,         # __syncthreads with all warps arriving together
    launch_gap_s=2.5e-6,       # one small kernel back to back on a stream, no CUDA graph
    small_gemm_s=6.0e-6,       # a cuBLAS GEMM too small to fill the GPU, launch included
    big_gemm_fraction=0.6,     # of peak, for the projection and weight-gradient GEMMs over all steps
    peak_fp32_flops=67e12,     # non-tensor fp32 (cuBLAS fp32 GEMMs; TF32 off, torch's matmul default)
    peak_mma_flops=989e12,     # dense fp16/bf16 tensor cores
    pointwise_clk=300,         # one element's gate math (a few exp/tanh) plus its global loads and stores
)


@dataclass
class Case:
    cell: str
    T: int
    B: int
    H: int
    I: int  # noqa: E741
    dtype: str


def _plan(case: Case, D: int = 1):
    from fastrnn import _C  # the kernel's own plan

    return _C.persistent_plan(D=D, B=case.B, H=case.H, P=case.H, G=GATES[case.cell], dtype=case.dtype,
                              multiprocessors=DEVICE["sms"], shared_bytes_per_block=DEVICE["shared_bytes"])


def _element_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def _peak(dtype: str) -> float:
    return DEVICE["peak_fp32_flops"] if dtype == "float32" else DEVICE["peak_mma_flops"]


def flops(case: Case) -> dict:
    """Forward: the input projection and the recurrence, 2*T*B*(I+H)*G*H; backward about twice that."""
    G = GATES[case.cell]
    projection = 2 * case.T * case.B * case.I * G * case.H
    recurrence = 2 * case.T * case.B * case.H * G * case.H
    return dict(projection=projection, recurrence=recurrence, forward=projection + recurrence,
                backward=2 * (projection + recurrence))


def _outside_loop(case: Case) -> tuple[float, float]:
    """Both paths: the input projection before the loop (forward); backward's weight and x gradients after."""
    f = flops(case)
    rate = _peak(case.dtype) * DEVICE["big_gemm_fraction"]
    return f["projection"] / rate, (2 * f["projection"] + f["recurrence"]) / rate


def stepwise(case: Case) -> dict:
    """Per step: one GEMM (cuBLAS, [B, H] @ [H, G*H]) and one pointwise launch; backward the same."""
    G, e = GATES[case.cell], _element_bytes(case.dtype)
    weight_bytes = G * case.H * case.H * e  # read from L2 (or HBM when it does not fit) at every step
    step_flops = 2 * case.B * case.H * G * case.H
    gemm = max(DEVICE["small_gemm_s"], weight_bytes / DEVICE["l2_bytes_per_s"], step_flops / _peak(case.dtype))
    step = gemm + DEVICE["launch_gap_s"]
    pre, post = _outside_loop(case)
    forward = pre + case.T * step
    backward = case.T * step + post
    return dict(launches_forward=1 + 2 * case.T, launches_backward=2 * case.T + 4, barriers=0,
                bytes_per_step=weight_bytes + 2 * case.B * G * case.H * e, step_us=step * 1e6,
                forward_ms=forward * 1e3, train_ms=(forward + backward) * 1e3)


def _product_clk(rows: int, k_pad: int, n_pad: int, k_chunk: int, splits: int, dtype: str,
                 threads: int = 256) -> float:
    """One block's product of a row chunk (persistent.h rows_times_weight): per chunk of columns, the larger
    of throughput and the longest dependent chain, plus the partial sums' addition and three block barriers."""
    clk = 0.0
    for k0 in range(0, k_pad, k_chunk):
        kc = min(k_chunk, k_pad - k0)
        length = -(-kc // splits)
        if dtype == "float32":  # block_product: a thread per element of one partial sum, a chain over its split
            jobs, fmas = rows * n_pad * splits, rows * n_pad * kc
            chain = math.ceil(jobs / threads) * length * DEVICE["fma_chain_clk"]
            clk += max(fmas / DEVICE["fp32_fma_per_clk_sm"], chain)
        else:  # tensor_core_product: a warp per (16 x 16 tile, split), 16-deep MMA steps over its split
            tiles = (_round16(rows) // 16) * (n_pad // 16)
            fmas = _round16(rows) * n_pad * kc
            chain = math.ceil(tiles * splits / (threads // 32)) * (-(-length // 16)) * DEVICE["mma_chain_clk"]
            clk += max(fmas / DEVICE["mma_fma_per_clk_sm"], chain)
        clk += math.ceil(rows * n_pad / threads) * splits * 4 + 3 * DEVICE["block_sync_clk"]  # block_sum, barriers
    return clk


def _round16(n: int) -> int:
    return -(-n // 16) * 16


def persistent(case: Case) -> dict | None:
    """Per step per block: load the state's rows from L2, the product on the on-chip weight slice, the
    pointwise update of the block's units, one grid barrier. None where the plan does not fit."""
    plan = _plan(case)
    if not plan["fits"]:
        return None
    G, e, U = GATES[case.cell], _element_bytes(case.dtype), plan["units_per_block"]
    clk = DEVICE["clock_hz"]
    chunks = math.ceil(case.B / plan["row_chunk"])
    state_bytes_block = case.B * case.H * e  # every block reads the whole state each step
    load_clk = state_bytes_block / DEVICE["l2_bytes_per_clk_sm"]
    load_all = plan["blocks"] * state_bytes_block / DEVICE["l2_bytes_per_s"]

    def step(pass_):
        product = sum(_product_clk(min(plan["row_chunk"], case.B - c * plan["row_chunk"]), plan[f"{pass_}_k_pad"],
                                   plan[f"{pass_}_n_pad"], plan[f"{pass_}_k_chunk"], plan[f"{pass_}_k_splits"],
                                   case.dtype) for c in range(chunks))
        pointwise = math.ceil(case.B * U / plan["threads_per_block"]) * DEVICE["pointwise_clk"]
        syncs = chunks * DEVICE["block_sync_clk"]
        return max(load_clk / clk, load_all) + (product + pointwise + syncs) / clk + DEVICE["grid_sync_s"]

    fwd_step = step("forward")
    # Backward's state is the gate gradients, G*H per row (G times forward's bytes).
    bwd_step = step("backward") + (G - 1) * max(load_clk / clk, load_all)
    pre, post = _outside_loop(case)
    weight_load = G * case.H * case.H * e / DEVICE["hbm_bytes_per_s"]  # once per launch, spread over all SMs
    forward = pre + DEVICE["launch_gap_s"] + weight_load + case.T * fwd_step
    backward = DEVICE["launch_gap_s"] + weight_load + case.T * bwd_step + post
    return dict(launches_forward=2, launches_backward=5, barriers=2 * case.T, blocks=plan["blocks"],
                units_per_block=U, shared_kib=max(plan["forward_shared_bytes"], plan["backward_shared_bytes"]) / 1024,
                bytes_per_step=plan["blocks"] * state_bytes_block, step_us=fwd_step * 1e6,
                forward_ms=forward * 1e3, train_ms=(forward + backward) * 1e3)


def cases():
    for c in GPU_CASES:
        for dtype in ("float32", "bfloat16"):
            yield Case(c.cell, c.T, c.B, c.H, c.I, dtype)
    for c in ANCHOR_CASES:
        for dtype in ("float16", "bfloat16"):
            yield Case(c.cell, c.T, c.B, c.H, c.I, dtype)


def table() -> str:
    lines = [
        "| case | dtype | fwd GFLOP | stepwise: launches fwd/bwd, us/step, fwd ms, train ms | persistent: blocks x units, "
        "KiB shared, barriers, us/step, fwd ms, train ms | predicted speedup fwd / train |",
        "|---|---|--:|---|---|--:|",
    ]
    for c in cases():
        s, p = stepwise(c), persistent(c)
        label = f"{c.cell} T={c.T} B={c.B} H={c.H}"
        sw = (f"{s['launches_forward']}/{s['launches_backward']}, {s['step_us']:.1f}, {s['forward_ms']:.2f}, "
              f"{s['train_ms']:.2f}")
        if p is None:
            pw, speed = "does not fit (stepwise runs)", "-"
        else:
            pw = (f"{p['blocks']} x {p['units_per_block']}, {p['shared_kib']:.0f}, {p['barriers']}, {p['step_us']:.1f}, "
                  f"{p['forward_ms']:.2f}, {p['train_ms']:.2f}")
            speed = f"{s['forward_ms'] / p['forward_ms']:.1f}x / {s['train_ms'] / p['train_ms']:.1f}x"
        lines.append(f"| {label} | {c.dtype} | {flops(c)['forward'] / 1e9:.2f} | {sw} | {pw} | {speed} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args(argv)
    text = table()
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
