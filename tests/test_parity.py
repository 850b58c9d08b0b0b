"""Parity of fastrnn's layers and cells with torch.nn on the CPU.

Outputs, final states and gradients with respect to the input, hx and every parameter, over a
grid of cell x layers x bidirectional x bias x input case (see CASES); the full grid in float64
with a tight tolerance, a reduced one in float32, and half/bfloat16 with the "at most 2x torch.nn's
error" rule. The reference (fastrnn.reference.rnn, the oracle of the property tests) is itself
checked against torch.nn here: the two-level oracle.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence

from conftest import (
    CELL_KINDS,
    LOW_PRECISION,
    InputCase,
    assert_low_precision_close,
    assert_results_close,
    check_layer_parity,
    force_reference,
    make_cell_pair,
    make_hx,
    make_input,
    make_pair,
    outputs_and_grads,
)
import fastrnn

# torch.nn's own notice that its oneDNN path lacks proj_size (it falls back to its default one).
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN:UserWarning")

I, H = 5, 7  # input and hidden sizes: odd, not powers of two (proj_size 3 for lstm_proj)

# Input cases: each kind with hx given and omitted, batch_first where it means something (and
# once for packed input, where it must be ignored), T = 1 and B = 1, non-contiguous inputs,
# variable lengths with a sequence of length 1, equal lengths and unsorted lengths.
CASES = [
    InputCase("padded", T=5, B=3, hx=True),
    InputCase("padded", T=5, B=3, batch_first=True, hx=False, layout="slice"),
    InputCase("padded", T=5, B=3, hx=False, layout="transposed"),
    InputCase("padded", T=5, B=1, batch_first=True, hx=True, layout="transposed"),
    InputCase("padded", T=1, B=1, hx=True, layout="slice"),
    InputCase("padded", T=1, B=3, batch_first=True, hx=False),
    InputCase("packed", lengths=(5, 3, 1), hx=True, layout="slice"),
    InputCase("packed", lengths=(5, 5, 2), batch_first=True, hx=False),
    InputCase("packed", lengths=(1,), hx=True),
    InputCase("packed_unsorted", lengths=(2, 5, 1), hx=True, layout="slice"),
    InputCase("packed_unsorted", lengths=(3, 5, 3), batch_first=True, hx=False),
    InputCase("packed_unsorted", lengths=(1, 1, 1), hx=True),
    InputCase("unbatched", T=5, hx=True, layout="slice"),
    InputCase("unbatched", T=5, batch_first=True, hx=False),
    InputCase("unbatched", T=1, batch_first=True, hx=True),
    InputCase("unbatched", T=1, hx=False),
]
CASE_IDS = [c.id for c in CASES]


def check_structure(ref, twin, case, kind, num_layers, bidirectional, dtype, device="cpu"):
    """Shapes, dtypes and PackedSequence metadata of the results match torch.nn's exactly."""
    outs = []
    for module in (ref, twin):
        x, _ = make_input(case, I, dtype=dtype, device=device)
        hx, _ = make_hx(case, kind, num_layers, bidirectional, H, dtype=dtype, device=device)
        with torch.no_grad():
            outs.append(module(x) if hx is None else module(x, hx))
    (r_out, r_hidden), (t_out, t_hidden) = outs
    assert type(t_out) is type(r_out)
    if isinstance(r_out, PackedSequence):
        assert torch.equal(t_out.batch_sizes, r_out.batch_sizes)
        for name in ("sorted_indices", "unsorted_indices"):
            r, t = getattr(r_out, name), getattr(t_out, name)
            assert (r is None) == (t is None) and (r is None or torch.equal(r, t)), name
        r_out, t_out = r_out.data, t_out.data
    assert t_out.shape == r_out.shape and t_out.dtype == r_out.dtype
    r_states = r_hidden if isinstance(r_hidden, tuple) else (r_hidden,)
    t_states = t_hidden if isinstance(t_hidden, tuple) else (t_hidden,)
    assert len(t_states) == len(r_states)
    for r, t in zip(r_states, t_states):
        assert t.shape == r.shape and t.dtype == r.dtype


# ----------------------------------------------------------------------------- float64: full grid

@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["L1", "L2", "L3"])
@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_layer_parity_float64(cell, num_layers, bidirectional, bias, case):
    ref, twin = check_layer_parity(cell, num_layers, bidirectional, bias, case, torch.float64)
    check_structure(ref, twin, case, CELL_KINDS[cell], num_layers, bidirectional, torch.float64)


# The reference against torch.nn (the oracle's own check, which makes the kernels-vs-reference
# property tests meaningful): fastrnn's modules running fastrnn.reference.rnn, the same full grid.
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3], ids=["L1", "L2", "L3"])
@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_reference_parity_float64(cell, num_layers, bidirectional, bias, case):
    check_layer_parity(cell, num_layers, bidirectional, bias, case, torch.float64, reference=True)


# ----------------------------------------------------------------------------- float32: reduced grid

FLOAT32_CASES = [CASES[i] for i in (0, 1, 4, 6, 10, 13)]


@pytest.mark.parametrize("case", FLOAT32_CASES, ids=[c.id for c in FLOAT32_CASES])
@pytest.mark.parametrize("num_layers,bidirectional,bias", [(1, False, True), (2, True, True), (2, False, False)],
                         ids=["L1-uni-bias", "L2-bi-bias", "L2-uni-nobias"])
@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_layer_parity_float32(cell, num_layers, bidirectional, bias, case):
    check_layer_parity(cell, num_layers, bidirectional, bias, case, torch.float32)


# ----------------------------------------------------------------------------- threaded slices

# The CPU kernels split a mid-sized step between threads by hidden units (csrc/cpu/recurrence.h,
# step_slices: one step's B*G*H*H multiply-adds in [2^18, 2^22), 2+ threads). These sizes take
# that path, with an uneven split (120 units = 48 + 72) and sequences ending at different steps,
# in both directions: each slice then carries some finished rows through its share of the state.
SLICED_BATCH = {"rnn_tanh": 19, "rnn_relu": 19, "lstm": 5, "gru": 7}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", list(SLICED_BATCH))
def test_layer_parity_threaded_slices(cell, bidirectional, dtype):
    lengths = tuple(1 + (5 * b) % 6 for b in range(SLICED_BATCH[cell]))  # 1..6, unsorted
    case = InputCase("packed_unsorted", lengths=lengths, hx=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        check_layer_parity(cell, 2, bidirectional, True, case, dtype, input_size=9, hidden_size=120)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- pipelined projection

# For small steps (B*G*H*H < 2^20 multiply-adds) with 2+ threads and more than one block of steps,
# the CPU forward computes the input projection on a second thread, a block of ceil(128 / B) steps
# ahead of the recurrence, and the backward the weight gradients a block behind it
# (csrc/cpu/recurrence.h, pipeline_plan / run_pipelined). B=3 gives blocks
# of 43 steps; T=100 gives 3 blocks (the last one short), consumed in reverse in the backward
# direction; unsorted lengths end sequences inside different blocks.
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "lstm_proj", "gru"])
def test_layer_parity_pipelined_projection(cell, bidirectional, dtype):
    case = InputCase("packed_unsorted", lengths=(60, 100, 1), hx=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        check_layer_parity(cell, 2, bidirectional, True, case, dtype, input_size=5, hidden_size=7)
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- cells

CELL_NAMES = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def _cell_input(batch, hx_given, kind, dtype, seed=11):
    """Cell input [B, I] (batch None: unbatched [I]) and hx, with their leaves."""
    gen = torch.Generator().manual_seed(seed)
    shape = () if batch is None else (batch,)
    x = torch.randn(shape + (I,), generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    leaves = {"input": x}
    if not hx_given:
        return x, None, leaves
    states = [torch.randn(shape + (H,), generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
              for _ in range(2 if kind.is_lstm else 1)]
    leaves.update(zip(("h0", "c0"), states))
    return x, (tuple(states) if kind.is_lstm else states[0]), leaves


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("hx_given", [True, False], ids=["hx", "nohx"])
@pytest.mark.parametrize("batch", [3, 1, None], ids=["B3", "B1", "unbatched"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_cell_parity(cell, bias, batch, hx_given, dtype):
    kind = CELL_KINDS[cell]
    ref, twin = make_cell_pair(kind, I, H, bias=bias, dtype=dtype)
    results = []
    for module in (ref, twin):
        x, hx, leaves = _cell_input(batch, hx_given, kind, dtype)
        results.append(outputs_and_grads(module, x, hx, leaves))
    expected, actual = results
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
    assert_results_close(actual, expected, dtype=dtype, what=f"{cell} cell vs torch.nn")


# ----------------------------------------------------------------------------- half / bfloat16

_TORCH_NN_SUPPORT: dict = {}


def torch_nn_supports(kind, dtype) -> bool:
    """Whether torch.nn runs (forward and backward) this cell in `dtype` on the CPU in this torch."""
    key = (kind.name, dtype)
    if key not in _TORCH_NN_SUPPORT:
        module = kind.torch_cls(2, 7, dtype=dtype, **dict(kind.kwargs))
        x = torch.zeros(2, 1, 2, dtype=dtype, requires_grad=True)
        try:
            module(x)[0].sum().backward()
            _TORCH_NN_SUPPORT[key] = True
        except (RuntimeError, NotImplementedError):
            _TORCH_NN_SUPPORT[key] = False
    return _TORCH_NN_SUPPORT[key]


def _relu_away_from_kinks(module) -> None:
    """Weights for which every ReLU pre-activation stays far from 0 (checked by the test).

    ReLU's derivative jumps at 0: where a float64 pre-activation lies within rounding distance of
    0, any low-precision implementation may legitimately take the other branch, and its gradient
    then differs by O(1) from the float64 one (observed for torch.nn and fastrnn alike, on
    different random draws). The 2x rule is only meaningful away from the kinks, so each hidden
    unit gets a bias of +-2 (alternating: both branches are exercised) that dominates its
    weighted inputs, which are scaled down.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.startswith("weight"):
                p.mul_(0.2)
            elif name.startswith("bias_ih"):
                p.copy_(torch.tensor([2.0, -2.0], dtype=p.dtype).repeat(p.numel())[:p.numel()])
            else:
                p.zero_()


def _relu_preactivation_margin(kind, ref64, x, hx) -> float:
    """min |pre-activation| over every ReLU application when fastrnn's float64 reference runs with
    the weights of the torch.nn module `ref64` (the reference equals torch.nn: tested above)."""
    module = kind.fastrnn_cls(ref64.input_size, ref64.hidden_size, num_layers=ref64.num_layers,
                              bidirectional=ref64.bidirectional, dtype=torch.float64, **dict(kind.kwargs))
    module.load_state_dict(ref64.state_dict())
    seen = []
    original = fastrnn.reference.rnn_cell

    def recording(x_t, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
        pre = torch.nn.functional.linear(x_t, w_ih, b_ih) + torch.nn.functional.linear(h, w_hh, b_hh)
        seen.append(pre.detach().abs().min().item())
        return original(x_t, h, w_ih, w_hh, b_ih, b_hh, nonlinearity)

    with force_reference(), torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(fastrnn.reference, "rnn_cell", recording)
        module(x, hx)
    assert seen, "the reference did not run"
    return min(seen)


@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=["bf16", "fp16"])
@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_low_precision_error_vs_torch_nn(cell, dtype):
    """fastrnn's error in half/bf16 (against float64) is at most ~2x torch.nn's in that dtype."""
    kind = CELL_KINDS[cell]
    num_layers, bidirectional = 2, True
    case = InputCase("padded", T=6, B=4, hx=True)
    ref64, _ = make_pair(kind, I, H, num_layers=num_layers, bidirectional=bidirectional, seed=5)
    if cell == "rnn_relu":
        _relu_away_from_kinks(ref64)
    # The float64 reference computes from the very same (rounded) weights and inputs, so that
    # only the arithmetic differs, not the data.
    with torch.no_grad():
        for p in ref64.parameters():
            p.copy_(p.to(dtype).double())
    twin = kind.fastrnn_cls(I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
                            **dict(kind.kwargs))
    twin.load_state_dict(ref64.state_dict())
    if torch_nn_supports(kind, dtype):
        baseline = kind.torch_cls(I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
                                  **dict(kind.kwargs))
        baseline.load_state_dict(ref64.state_dict())
        baseline_ctx = torch.enable_grad
    else:  # torch.nn lacks this dtype on the CPU: the baseline is fastrnn's reference in that dtype
        baseline = kind.fastrnn_cls(I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
                                    **dict(kind.kwargs))
        baseline.load_state_dict(ref64.state_dict())
        baseline_ctx = force_reference

    def results(module, run_dtype, ctx=torch.enable_grad):
        x, leaves = make_input(case, I, dtype=dtype)
        hx, hx_leaves = make_hx(case, kind, num_layers, bidirectional, H, dtype=dtype)
        if run_dtype == torch.float64:  # the same rounded values, as float64 leaves
            x, leaves = x.detach().double().requires_grad_(), {}
            leaves["input"] = x
            hx = tuple(s.detach().double().requires_grad_() for s in hx) if kind.is_lstm else \
                hx.detach().double().requires_grad_()
            hx_leaves = dict(zip(("h0", "c0"), hx)) if kind.is_lstm else {"h0": hx}
        leaves.update(hx_leaves)
        with ctx():
            return outputs_and_grads(module, x, hx, leaves, cotangent_dtype=dtype)

    if cell == "rnn_relu":
        x, _ = make_input(case, I, dtype=dtype)
        hx, _ = make_hx(case, kind, num_layers, bidirectional, H, dtype=dtype)
        margin = _relu_preactivation_margin(kind, ref64, x.detach().double(), hx.detach().double())
        assert margin > 0.5, f"ReLU pre-activations come within {margin} of 0: the test's premise fails"
    expected = results(ref64, torch.float64)
    assert_low_precision_close(results(twin, dtype), results(baseline, dtype, baseline_ctx), expected, dtype,
                               what=f"{cell} layers={num_layers} bidirectional")


# ----------------------------------------------------------------------------- NaN propagation

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["f64", "f32", "bf16"])
@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_nan_propagates_like_torch_nn(cell, dtype):
    """A NaN in the input reaches exactly the outputs and gradients it reaches in torch.nn.

    Catches activations that swallow NaN (e.g. a relu written `x > 0 ? x : 0` maps NaN to 0, and a
    relu backward written `h > 0 ? dh : 0` drops the gradient where torch's threshold_backward keeps it).
    """
    kind = CELL_KINDS[cell]
    if dtype != torch.float64 and not torch_nn_supports(kind, dtype):
        pytest.skip(f"torch.nn has no CPU {cell} in {dtype} in this torch")
    ref, twin = make_pair(kind, 3, 4, num_layers=2, dtype=dtype, seed=5)
    x = torch.randn(4, 2, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64).to(dtype)
    x[1, 0, 2] = float("nan")
    results = []
    for module in (ref, twin):
        xi = x.clone().requires_grad_(True)
        out, _ = module(xi)
        grad_out = torch.ones_like(out)
        grad_out[2, 1] = float("nan")  # NaN arriving from the loss, too
        out.backward(grad_out)
        results.append((out.detach().isnan(), xi.grad.isnan(), [p.grad.isnan() for p in module.parameters()]))
    (out_r, gx_r, gp_r), (out_t, gx_t, gp_t) = results
    assert torch.equal(out_r, out_t), "NaN pattern of the output differs from torch.nn"
    assert torch.equal(gx_r, gx_t), "NaN pattern of the input gradient differs from torch.nn"
    for a, b in zip(gp_r, gp_t):
        assert torch.equal(a, b), "NaN pattern of a parameter gradient differs from torch.nn"
