"""The persistent CUDA kernel's block programs (csrc/include/fastrnn/persistent.h), run on the CPU.

csrc/cpu/persistent_emulation.cpp runs the programs unchanged with one host thread per thread of every block of
the grid, std::barrier for __syncthreads and for the grid barrier, on an emulated device whose limits the tests
set (fastrnn._C.set_persistent_emulation): few multiprocessors split H over several blocks per direction with a
smaller last block (the tile edge), little shared memory makes a block load the state in several row chunks, and
several threads per block interleave. Registered as the test-only ops torch.ops.fastrnn_persistent_test.* (the
schemas of torch.ops.fastrnn.*), compared with the CPU kernels in float64 and float32, with FASTRNN_DEBUG=1 so
that outputs, buffers and the emulated shared memory start NaN: an element the kernel fails to write, or reads
before a barrier made it ready, shows up.

The plan (which calls fit on-chip, how they are split, why not) and the CUDA path choice are tested through
fastrnn._C.persistent_plan and fastrnn._C.choose_cuda_path, without a GPU.
"""

from __future__ import annotations

import pytest
import torch

import fastrnn  # noqa: F401  (registers the ops)
from fastrnn import _C
from fastrnn._ops import GATES
from conftest import assert_low_precision_close
from test_engine import ROW_LENGTHS, _check_engine_against_kernels, _engine_op, _kernel_op, _outputs_and_grads
from test_ops import backward_names, make_args

T, B, H = 7, 5, 5


@pytest.fixture
def emulated(monkeypatch):
    """Sets the emulated device for the test and restores the one before."""
    monkeypatch.setenv("FASTRNN_DEBUG", "1")
    before = _C.set_persistent_emulation(4, 1 << 20, 2)

    def set_device(multiprocessors, shared_bytes_per_block, threads_per_block, max_row_chunk=32, tile=0,
                   max_k_chunk=0, k_splits=0, tf32=False):
        _C.set_persistent_emulation(multiprocessors, shared_bytes_per_block, threads_per_block, max_row_chunk, tile,
                                    max_k_chunk, k_splits, tf32)

    yield set_device
    _C.set_persistent_emulation(*before)


# (multiprocessors, threads per block, rows per chunk, tile, columns per chunk, K splits): with H = 5, 4
# multiprocessors give one direction 3 blocks of 2, 2, 1 units and each of two directions 2 blocks of 3, 2; 6
# give 5 blocks of 1 unit, or 3 of 2, 2, 1 per direction. Chunks of 2 rows: B = 5 rows load as 2, 2, 1 (fewer
# as lengths end). Tile 16: the zero-padded tiles that half and bfloat16 multiply on the tensor cores (here in
# float, by block_product). Columns per chunk and K splits: the state loaded a few columns at a time (K = H =
# 5 as 2, 2, 1; backward's K = G*H by 16s when tiled) and each chunk's product summed from partial sums (with
# 3 splits of 2 columns some splits are short or empty).
DEVICES = {
    "4sm-2threads-tile16": (4, 2, 32, 16, 0, 0),
    "6sm-3threads-rowchunks-kchunks-splits": (6, 3, 2, 0, 2, 3),
    "4sm-1thread-rowchunks-tile16-kchunks-splits": (4, 1, 2, 16, 16, 2),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("lengths", [None, *ROW_LENGTHS])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("device", DEVICES)
def test_persistent_kernel_matches_cpu_kernels(device, cell, D, lengths, dtype, emulated):
    emulated(DEVICES[device][0], 1 << 20, *DEVICES[device][1:])
    _check_engine_against_kernels(cell, D, True, False, ROW_LENGTHS.get(lengths), dtype, T=T, B=B, H=H,
                                  namespace="fastrnn_persistent_test")


@pytest.mark.parametrize("case", ["T1", "B1", "no_bias", "zero_state", "one_block", "H1"])
@pytest.mark.parametrize("D", [1, 2])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_persistent_kernel_edges(case, cell, D, emulated):
    """A cell's step (T = 1), one row, no biases, the zero state a module without hx passes, one block per
    direction, one hidden unit (more blocks allowed than units)."""
    sizes = dict(T=T, B=B, H=H)
    multiprocessors = 4
    if case == "T1":
        sizes["T"] = 1
    elif case == "B1":
        sizes["B"] = 1
    elif case == "one_block":
        multiprocessors = D
    elif case == "H1":
        sizes["H"] = 1
    emulated(multiprocessors, 1 << 20, 2)
    _check_engine_against_kernels(cell, D, case != "no_bias", False, None, torch.float64,
                                  namespace="fastrnn_persistent_test", zero_state=case == "zero_state", **sizes)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cell,D,lengths", [("lstm", 2, "sorted"), ("gru", 1, "unsorted_with_0"),
                                            ("rnn_tanh", 2, None)])
def test_persistent_kernel_in_half_precision(cell, D, lengths, dtype, emulated):
    """bfloat16 and float16: the padded 16 x 16 tiles of the tensor-core product (multiplied here by
    block_product, accumulating in float), against the CPU kernels in the same dtype by the low-precision
    rule (conftest): the error against float64 on the same rounded inputs at most twice the CPU kernels'."""
    emulated(4, 1 << 20, 2, 2)
    args = make_args(cell, D, lengths=ROW_LENGTHS.get(lengths), requires_grad=False, T=T, B=B, H=H)
    rounded = {k: v.to(dtype).to(torch.float64) if torch.is_tensor(v) and v.is_floating_point() else v
               for k, v in args.items()}
    low = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in rounded.items()}
    y64, hn64, *_ = _kernel_op(cell)(*rounded.values(), False)
    gen = torch.Generator().manual_seed(1)
    grads64 = [torch.randn(y64.shape, generator=gen, dtype=torch.float64),
               torch.randn(hn64.shape, generator=gen, dtype=torch.float64)]
    if cell == "lstm":
        grads64.append(torch.randn(hn64.shape, generator=gen, dtype=torch.float64))
    grads64 = [g.to(dtype).to(torch.float64) for g in grads64]
    grads = [g.to(dtype) for g in grads64]
    names = ["y", "hn"] + (["cn"] if cell == "lstm" else []) + backward_names(cell)

    def run(namespace, a, g):
        fwd, bwd = _outputs_and_grads(_engine_op(cell, namespace=namespace),
                                      _engine_op(cell, True, namespace=namespace), cell, a, g)
        return {n: t for n, t in zip(names, fwd + bwd) if t.numel()}

    ref = {k: v.double() for k, v in run("fastrnn", rounded, grads64).items()}
    assert_low_precision_close(run("fastrnn_persistent_test", low, grads), run("fastrnn", low, grads), ref, dtype,
                               what=f"{cell} D={D} {lengths}")


@pytest.mark.parametrize("cell,D,lengths", [("lstm", 2, "sorted"), ("gru", 1, "unsorted_with_0"),
                                            ("rnn_tanh", 2, None)])
def test_persistent_kernel_in_tf32(cell, D, lengths, emulated):
    """float32 with TF32 allowed (on CUDA: torch.backends.cudnn.allow_tf32, sm_80+): the product's operands
    rounded to TF32 (10 mantissa bits, as __float_to_tf32 rounds for the tensor cores) over padded 16 x 16
    tiles, summed in float. Its error against float64 on the same inputs is TF32's: at most twice the float16
    CPU kernels' (the same 11-bit significand, rounded at every store too) plus a TF32 unit, and far above
    IEEE float32's (so the rounding is applied: with it dropped, this fails)."""
    plan = _C.persistent_plan(D=D, B=B, H=H, P=H, G=GATES[cell], dtype="float32", multiprocessors=4,
                              shared_bytes_per_block=1 << 20, threads_per_block=2, tf32=True)
    assert plan["tf32"] and plan["tile"] == 16 and plan["forward_n_pad"] % 16 == 0, plan
    args = make_args(cell, D, lengths=ROW_LENGTHS.get(lengths), requires_grad=False, T=T, B=B, H=H)
    # Inputs exact in float16, so that every run starts from the same values.
    args64 = {k: v.to(torch.float16).to(torch.float64) if torch.is_tensor(v) and v.is_floating_point() else v
              for k, v in args.items()}
    cast = lambda dtype: {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v  # noqa: E731
                          for k, v in args64.items()}
    names = ["y", "hn"] + (["cn"] if cell == "lstm" else []) + backward_names(cell)
    with torch.no_grad():
        y, hn, *_ = _kernel_op(cell)(*args64.values(), False)
    gen = torch.Generator().manual_seed(1)
    grads64 = [torch.randn(t.shape, generator=gen, dtype=torch.float64).to(torch.float16).to(torch.float64)
               for t in ([y, hn, hn] if cell == "lstm" else [y, hn])]

    def run(namespace, dtype):
        fwd, bwd = _outputs_and_grads(_engine_op(cell, namespace=namespace),
                                      _engine_op(cell, True, namespace=namespace), cell, cast(dtype),
                                      [g.to(dtype) for g in grads64])
        return {n: t.double() for n, t in zip(names, fwd + bwd) if t.numel()}

    ref = run("fastrnn", torch.float64)
    half = run("fastrnn", torch.float16)
    ieee = run("fastrnn_persistent_test", torch.float32)
    emulated(4, 1 << 20, 2, tf32=True)
    tf32 = run("fastrnn_persistent_test", torch.float32)
    failures = []
    worst_tf32 = worst_ieee = 0.0
    for name, want in ref.items():
        scale = max(1.0, want.abs().max().item())
        err_tf32, err_half = ((got[name] - want).abs().max().item() for got in (tf32, half))
        err_ieee = (ieee[name] - want).abs().max().item()
        worst_tf32, worst_ieee = max(worst_tf32, err_tf32 / scale), max(worst_ieee, err_ieee / scale)
        if not err_tf32 <= 2 * err_half + 2.0 ** -10 * scale:
            failures.append(f"[{name}] TF32 error {err_tf32:.3g} > 2 x float16's {err_half:.3g} + a TF32 unit")
    assert not failures, f"{cell} D={D} {lengths}:\n" + "\n".join(failures)
    assert worst_tf32 > 30 * worst_ieee, \
        f"TF32 not applied? worst relative errors {worst_tf32:.3g} vs IEEE {worst_ieee:.3g}"


def test_persistent_kernel_without_saving_gives_the_same_outputs(emulated):
    """save_for_backward False (inference) runs the same loop without the workspace."""
    emulated(4, 1 << 20, 2)
    for cell in ("lstm", "gru", "rnn_relu"):
        args = make_args(cell, 2, lengths=(3, 0, 2), requires_grad=False, T=4, B=3, H=5)
        op = getattr(torch.ops.fastrnn_persistent_test, f"{cell}_layer")
        want = getattr(torch.ops.fastrnn, f"{cell}_layer")(*args.values(), False)
        got = op(*args.values(), False)
        for name, g, w in zip(("y", "hn", "cn"), got[:-1], want[:-1]):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-12, msg=lambda m: f"{cell} {name}: {m}")


def test_persistent_kernel_gradcheck(emulated):
    """Through autograd (the ops' registered formula), float64, both directions, variable lengths."""
    emulated(4, 1 << 20, 3)
    args = make_args("lstm", 2, lengths=(4, 1, 3), T=4, B=3, H=3)
    lengths = args.pop("lengths")
    names = list(args)

    def f(*tensors):
        y, hn, cn, _ = torch.ops.fastrnn_persistent_test.lstm_layer(*tensors, lengths, True)
        return y, hn, cn

    torch.autograd.gradcheck(f, tuple(args[n] for n in names), check_undefined_grad=False)


def test_persistent_kernel_says_why_a_call_cannot_run(emulated):
    emulated(3, 100, 2)
    args = make_args("lstm", 1, requires_grad=False, T=3, B=2, H=5)
    with pytest.raises(RuntimeError, match=r"persistent kernel cannot run this call: the recurrent weight's slice "
                                           r"\(4 x 2 x 5 elements of 8 bytes per block, 3 blocks per direction\) "
                                           r"and the smallest tiles of rows need \d+ bytes of shared memory, more than the 100 "
                                           r"a block can have"):
        torch.ops.fastrnn_persistent_test.lstm_layer(*args.values(), False)
    emulated(3, 1 << 20, 2)
    args = make_args("lstm", 1, proj=True, requires_grad=False, T=3, B=2, H=5)
    with pytest.raises(RuntimeError, match="proj_size is not supported by the persistent kernel"):
        torch.ops.fastrnn_persistent_test.lstm_layer(*args.values(), False)
    with pytest.raises(RuntimeError, match="every limit must be at least 1 but got multiprocessors=0"):
        _C.set_persistent_emulation(0, 100, 1, 1, 0, 0, 0)


# ----------------------------------------------------------------------------- the plan and the path choice

H100 = dict(multiprocessors=132, shared_bytes_per_block=232448)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("D,Bn,Hn", [(1, 16, 768), (2, 64, 512), (1, 1, 128), (1, 256, 1024), (2, 8, 1024)])
def test_plan_keeps_every_block_resident_and_within_shared_memory(cell, dtype, D, Bn, Hn):
    """Where a call fits: one block per multiprocessor at most, every unit owned by exactly one block, the
    shared memory of both passes within the limit; where it does not, the reason names the limit."""
    G = GATES[cell]
    plan = _C.persistent_plan(D=D, B=Bn, H=Hn, P=Hn, G=G, dtype=dtype, **H100)
    element = {"float32": 4, "bfloat16": 2, "float16": 2}[dtype]
    t = 16 if element == 2 else 1  # tensor-core tiles for half and bfloat16 only
    tile = lambda n: -(-n // t) * t  # noqa: E731
    acc = 4
    assert plan["tile"] == t
    if not plan["fits"]:  # not even the smallest tiles fit beside the weight slice
        U = -(-Hn // (132 // D))
        smallest = [(tile(k) * tile(n) + tile(1) * min(tile(k), 16)) * element + 2 * tile(1) * tile(n) * acc
                     for k, n in ((Hn, G * U), (G * Hn, U))]
        assert max(smallest) > H100["shared_bytes_per_block"]
        assert "shared memory, more than the 232448 a block can have" in plan["why"]
        return
    U = plan["units_per_block"]
    assert plan["blocks"] <= H100["multiprocessors"] and plan["blocks"] == D * plan["blocks_per_direction"]
    assert (plan["blocks_per_direction"] - 1) * U < Hn <= plan["blocks_per_direction"] * U
    assert 1 <= plan["row_chunk"] <= min(Bn, 32)
    rows = tile(plan["row_chunk"])
    for pass_, (K, N) in (("forward", (Hn, G * U)), ("backward", (G * Hn, U))):
        k_pad, n_pad, chunk, splits = (plan[f"{pass_}_{x}"] for x in ("k_pad", "n_pad", "k_chunk", "k_splits"))
        assert (k_pad, n_pad) == (tile(K), tile(N))
        assert chunk % t == 0 and 0 < chunk <= k_pad and splits >= 1
        if element == 2:  # no more splits than warps left idle by the output tiles, none shorter than one MMA
            assert splits <= max(1, 8 // ((rows // 16) * (n_pad // 16))) and (splits == 1 or chunk // splits >= 16)
        assert plan[f"{pass_}_shared_bytes"] == \
            (k_pad * n_pad + rows * chunk) * element + (1 + splits) * rows * n_pad * acc
        assert plan[f"{pass_}_shared_bytes"] <= H100["shared_bytes_per_block"]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_persistent_kernel_with_the_plans_own_k_splits(cell, emulated):
    """The K splits the plan chooses itself for warps left idle (CUDA: 8 warps; here 4 warps of 128 threads, tile
    16), not forced by the tests: forward's 2 output tiles share 4 warps (2 splits), backward's one tile takes 4
    splits of K = G*H, the last ones short or empty. The emulation runs that plan with 128 host threads per block."""
    Hn = 20
    device = dict(multiprocessors=3, shared_bytes_per_block=1 << 20, threads_per_block=128, tile=16)
    plan = _C.persistent_plan(D=1, B=3, H=Hn, P=Hn, G=GATES[cell], dtype="float64", **device)
    assert plan["units_per_block"] == 7 and plan["forward_k_splits"] == 2 and plan["backward_k_splits"] == 4, plan
    emulated(device["multiprocessors"], device["shared_bytes_per_block"], device["threads_per_block"], 32,
             device["tile"])
    _check_engine_against_kernels(cell, 1, True, False, None, torch.float64, T=3, B=3, H=Hn,
                                  namespace="fastrnn_persistent_test")


def test_plan_fits_the_anchor_and_not_the_largest_fp32_lstm():
    anchor = _C.persistent_plan(D=1, B=16, H=768, P=768, G=4, dtype="float16", **H100)
    assert anchor["fits"] and anchor["blocks"] == 128 and anchor["units_per_block"] == 6
    big = _C.persistent_plan(D=2, B=64, H=1024, P=1024, G=4, dtype="float32", **H100)
    assert not big["fits"], big  # 2 directions x 16 MiB of fp32 weights > 132 x 227 KiB
    one_direction = _C.persistent_plan(D=1, B=64, H=1024, P=1024, G=4, dtype="bfloat16", **H100)
    # backward's rows of 4H gate gradients are loaded a part of their columns at a time
    assert one_direction["fits"] and one_direction["backward_k_chunk"] < 4096, one_direction


def test_cuda_path_choice_and_override(monkeypatch):
    """fastrnn/cuda_path.h: auto is stepwise (the persistent kernel has never run on a GPU); persistent is
    chosen only when forced, and a call it cannot run is then a clear error naming why."""
    sizes = dict(D=1, T=100, B=8, H=512, P=512, dtype="bfloat16", sm=90)
    monkeypatch.delenv("FASTRNN_CUDA_PATH", raising=False)
    assert _C.choose_cuda_path(**sizes) == "stepwise"
    for value in ("auto", "stepwise", ""):
        monkeypatch.setenv("FASTRNN_CUDA_PATH", value)
        assert _C.choose_cuda_path(**sizes) == "stepwise"
    monkeypatch.setenv("FASTRNN_CUDA_PATH", "persistent")
    assert _C.choose_cuda_path(**sizes) == "persistent"
    with pytest.raises(RuntimeError, match="FASTRNN_CUDA_PATH=persistent, but the persistent kernel cannot run this "
                                           "call: proj_size is not supported"):
        _C.choose_cuda_path(**{**sizes, "P": 256})
    with pytest.raises(RuntimeError, match="cannot run this call: the recurrent weight's slice"):
        _C.choose_cuda_path(**{**sizes, "H": 4096, "P": 4096, "dtype": "float32"})
    with pytest.raises(RuntimeError, match="needs compute capability 7.0 or newer and this device has 6.1"):
        _C.choose_cuda_path(**{**sizes, "sm": 61})
    monkeypatch.setenv("FASTRNN_CUDA_PATH", "fastest")
    with pytest.raises(RuntimeError,
                       match="FASTRNN_CUDA_PATH must be one of auto, stepwise, persistent .*got 'fastest'"):
        _C.choose_cuda_path(**sizes)
    monkeypatch.delenv("FASTRNN_CUDA_PATH")
    with pytest.raises(RuntimeError, match="dtype must be float32, float64, float16 or bfloat16 but got 'int8'"):
        _C.choose_cuda_path(**{**sizes, "dtype": "int8"})

