"""The CUDA group: every test is marked `cuda` and skips without a GPU (conftest.py).

fastrnn's modules on CUDA against torch.nn on CUDA (cuDNN) in float32, fastrnn on CUDA against
fastrnn on the CPU in float64, gradcheck in float64 on CUDA, FASTRNN_DEBUG poisoning, CUDA-graph
capture and replay, and independence from the stream. They test the CUDA ops (csrc/cuda/layers.cu: the
device-generic engine of csrc/include/fastrnn/engine.h, whose logic test_engine.py also checks on the
CPU), and fail if fastrnn falls back to its reference on CUDA.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from fastrnn import functional as fastrnn_functional
from conftest import (
    CELL_KINDS,
    InputCase,
    assert_low_precision_close,
    assert_results_close,
    check_layer_parity,
    init_parameters,
    layer_results,
    make_pair,
    tol,
)

pytestmark = [
    pytest.mark.cuda,
    # The reference must not stand in for the CUDA kernels here.
    pytest.mark.filterwarnings("error:fastrnn. this build has no CUDA kernels:RuntimeWarning"),
]


@pytest.fixture(autouse=True)
def _cuda_kernels_run():
    """Every test here runs the CUDA kernels, never the reference (whose warning is given once only)."""
    assert fastrnn_functional.kernels_available(torch.device("cuda")), fastrnn.backend_info()


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """Both sides in true fp32: cuDNN's RNNs follow cudnn.allow_tf32 (True by default, so torch.nn's
    fp32 might run in TF32, ~1e-3 relative) and ATen matmuls follow cuda.matmul.allow_tf32; the
    float32 tolerance assumes IEEE fp32 on both sides. Restored afterwards."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(params=["stepwise", "persistent"])
def cuda_path(request, monkeypatch):
    """Both CUDA time loops (csrc/include/fastrnn/cuda_path.h): auto's (stepwise) and the persistent kernel,
    forced (it has not run on a GPU before the first of these runs; tests/test_persistent.py checks its block
    programs on the CPU)."""
    monkeypatch.setenv("FASTRNN_CUDA_PATH", request.param)
    return request.param


def refused_by_the_path(cell, cuda_path):
    """The persistent kernel does not take proj_size: forced, a call must refuse with a clear error (True:
    the test has checked that and ends there)."""
    if cuda_path != "persistent" or not CELL_KINDS[cell].proj_size:
        return False
    module = fastrnn.LSTM(4, 6, proj_size=3, device="cuda")
    with pytest.raises(RuntimeError, match="FASTRNN_CUDA_PATH=persistent, but the persistent kernel cannot run this "
                                           "call: proj_size is not supported"):
        module(torch.randn(3, 2, 4, device="cuda"))
    return True


CUDA_CASES = [
    InputCase("padded", T=5, B=3, hx=True),
    InputCase("padded", T=1, B=1, batch_first=True, hx=False, layout="slice"),
    InputCase("packed", lengths=(5, 3, 1), hx=False),
    InputCase("packed_unsorted", lengths=(2, 5, 1), hx=True, layout="slice"),
    InputCase("unbatched", T=5, hx=True),
]


@pytest.mark.parametrize("case", CUDA_CASES, ids=[c.id for c in CUDA_CASES])
@pytest.mark.parametrize("num_layers,bidirectional,bias", [(1, False, True), (2, True, False)],
                         ids=["L1-uni-bias", "L2-bi-nobias"])
@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_cuda_parity_float32_vs_torch_nn(cell, num_layers, bidirectional, bias, case, cuda_path):
    if refused_by_the_path(cell, cuda_path):
        return
    check_layer_parity(cell, num_layers, bidirectional, bias, case, torch.float32, device="cuda")


@pytest.mark.parametrize("case", CUDA_CASES[::2], ids=[c.id for c in CUDA_CASES[::2]])
@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_cuda_matches_cpu_float64(cell, case, cuda_path):
    """fastrnn on CUDA equals fastrnn on the CPU (the tested kernels) in float64, tightly."""
    if refused_by_the_path(cell, cuda_path):
        return
    kind = CELL_KINDS[cell]
    module = init_parameters(kind.fastrnn_cls(5, 7, num_layers=2, bidirectional=True, batch_first=case.batch_first,
                                              dtype=torch.float64, **dict(kind.kwargs)), seed=0)
    args = (case, kind, 2, True, 5, 7)
    expected = layer_results(module, *args)
    actual = layer_results(module.cuda(), *args, device="cuda")
    assert_results_close({k: v.cpu() for k, v in actual.items()}, expected, dtype=torch.float64,
                         what=f"{cell} {case.id} cuda vs cpu")


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed_unsorted"])
@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_cuda_gradcheck_float64(cell, packed, cuda_path):
    """gradcheck through the whole layer on CUDA w.r.t. the input, h0 (and c0) and every parameter."""
    if refused_by_the_path(cell, cuda_path):
        return
    kind = CELL_KINDS[cell]
    H = 4
    module = kind.fastrnn_cls(3, H, num_layers=2, bidirectional=True, device="cuda", dtype=torch.float64,
                              **dict(kind.kwargs, **({"proj_size": 2} if kind.proj_size else {})))
    names = [n for n, _ in module.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in module.parameters()]
    gen = torch.Generator().manual_seed(0)
    T, B = 3, 2
    P = 2 if kind.proj_size else H

    def rand(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64).cuda().requires_grad_()

    x, h0 = rand(T, B, 3), rand(4, B, P)
    states = [h0, rand(4, B, H)] if kind.is_lstm else [h0]
    lengths = torch.tensor([2, 3])

    def fn(x, *rest):
        hx = tuple(rest[:len(states)]) if kind.is_lstm else rest[0]
        weights = dict(zip(names, rest[len(states):]))
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if packed else x
        out, hidden = torch.func.functional_call(module, weights, (inp, hx))
        out = out.data if isinstance(out, PackedSequence) else out
        return (out, *hidden) if isinstance(hidden, tuple) else (out, hidden)

    assert torch.autograd.gradcheck(fn, (x, *states, *params), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_cuda_debug_poison(cell, monkeypatch, cuda_path):
    """With FASTRNN_DEBUG=1 (outputs poisoned with NaN before kernels run), no NaN survives."""
    if refused_by_the_path(cell, cuda_path):
        return
    monkeypatch.setenv("FASTRNN_DEBUG", "1")
    kind = CELL_KINDS[cell]
    module = kind.fastrnn_cls(4, 7, num_layers=2, bidirectional=True, device="cuda", **dict(kind.kwargs))
    x = torch.randn(5, 3, 4, device="cuda", requires_grad=True)
    out, hidden = module(pack_padded_sequence(x, torch.tensor([2, 5, 1]), enforce_sorted=False))
    results = [out.data, *(hidden if isinstance(hidden, tuple) else (hidden,))]
    grads = torch.autograd.grad(sum((t * torch.randn_like(t)).sum() for t in results), [x, *module.parameters()])
    for t in [*results, *grads]:
        assert not torch.isnan(t).any()


def test_cuda_kernels_are_registered():
    assert fastrnn.backend_info()["cuda_kernels"], fastrnn.backend_info()
    for op in ("lstm_layer", "gru_layer", "rnn_tanh_layer", "rnn_relu_layer"):
        for name in (op, op + "_backward"):
            assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastrnn::{name}", "CUDA"), name


def _module_and_input(cell, seed=0):
    kind = CELL_KINDS[cell]
    torch.manual_seed(seed)
    module = kind.fastrnn_cls(6, 8, num_layers=2, bidirectional=True, device="cuda", **dict(kind.kwargs))
    return module, torch.randn(7, 4, 6, device="cuda")


def _forward_backward(module, x):
    x = x.detach().requires_grad_()
    out, _ = module(x)
    grads = torch.autograd.grad((out * out).sum(), [x, *module.parameters()])
    return [out.detach(), *grads]


@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_cuda_graph_capture_and_replay(cell, cuda_path):
    """The whole forward and backward captured in a CUDA graph (no host sync, no allocation the graph
    cannot own), replayed on two new inputs, equals eager execution computed before the capture."""
    if refused_by_the_path(cell, cuda_path):
        return
    module, x = _module_and_input(cell)
    inputs = [torch.randn_like(x), torch.randn_like(x)]
    want = [_forward_backward(module, xi) for xi in inputs]  # eager: make_graphed_callables replaces forward
    graphed = torch.cuda.make_graphed_callables(module, (x.clone().requires_grad_(),))
    for xi, want_i in zip(inputs, want):
        xg = xi.clone().requires_grad_()
        out, _ = graphed(xg)
        # The graph's static buffers are overwritten by the next replay: clone.
        got = [out.detach().clone(), *(g.clone() for g in torch.autograd.grad((out * out).sum(),
                                                                             [xg, *module.parameters()]))]
        for g, w in zip(got, want_i):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_cuda_graph_capture_of_packed_input_raises_clearly():
    module, x = _module_and_input("gru")
    packed = pack_padded_sequence(x, torch.tensor([7, 5, 5, 2]))
    module(packed)  # eager works
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph yet"):
        with torch.cuda.graph(graph):
            module(packed)


@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_cuda_results_do_not_depend_on_the_stream(cell):
    """Run on a side stream (the caller's current stream) that starts late, behind a sleep kernel, the
    results equal the default stream's: work launched on another stream would race with it."""
    module, x = _module_and_input(cell)
    want = _forward_backward(module, x)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU time before the work on this stream
        got = _forward_backward(module, x)
    torch.cuda.current_stream().wait_stream(side)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)  # float32 defaults: a race would show far above them


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_cuda_low_precision_vs_torch_nn(cell, dtype, cuda_path):
    """float16/bfloat16 on CUDA: fastrnn's error against float64 at most about twice torch.nn's (cuDNN)
    own error in that dtype (conftest.assert_low_precision_close, the project's rule for half types)."""
    if refused_by_the_path(cell, cuda_path):
        return
    kind = CELL_KINDS[cell]
    case = CUDA_CASES[0]
    ref64, twin64 = make_pair(kind, 5, 7, num_layers=2, bidirectional=True, dtype=torch.float64, device="cuda")
    args = (case, kind, 2, True, 5, 7)
    expected = layer_results(ref64, *args, dtype=torch.float64, device="cuda")
    baseline = layer_results(copy.deepcopy(ref64).to(dtype), *args, dtype=dtype, device="cuda")
    fast = layer_results(copy.deepcopy(twin64).to(dtype), *args, dtype=dtype, device="cuda")
    assert_low_precision_close(fast, baseline, expected, dtype, what=f"{cell} cuda {dtype}")


# ----------------------------------------------------------------------------- TF32, autocast, paths

def _tf32_problem(cell):
    """Sizes where cuBLAS runs float32 GEMMs on tensor cores when TF32 is allowed (K and N >= 128)."""
    kind = CELL_KINDS[cell]
    ref64, twin64 = make_pair(kind, 128, 128, num_layers=1, bidirectional=True, dtype=torch.float64, device="cuda")
    torch.manual_seed(1)
    x64 = torch.randn(6, 64, 128, dtype=torch.float64, device="cuda")
    want = ref64(x64)[0]
    return kind, ref64, twin64, x64, want


def _max_error(module64, x64, want):
    out = copy.deepcopy(module64).float()(x64.float())[0]
    return (out.double() - want).abs().max().item()


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_cuda_float32_follows_cudnn_tf32_flag(cell, cuda_path):
    """fastrnn's float32 GEMMs (and the persistent kernel's step product: TF32 wmma) follow
    torch.backends.cudnn.allow_tf32, as torch.nn's cuDNN RNNs do (not ATen's cuda.matmul flag, which stays
    off here): with it on, both compute in TF32 (errors ~1e-4..1e-3, fastrnn's at most twice torch.nn's plus
    a TF32 ulp); with it off, both in IEEE float32 (errors ~1e-6). ATen's matmul precision is as it was after
    the calls."""
    kind, ref64, twin64, x64, want = _tf32_problem(cell)
    matmul_before = torch.backends.cuda.matmul.fp32_precision
    errors = {}
    for flag in (True, False):
        torch.backends.cudnn.allow_tf32 = flag
        errors[flag] = _max_error(twin64, x64, want), _max_error(ref64, x64, want)
        assert torch.backends.cuda.matmul.fp32_precision == matmul_before
    (fast_on, torch_on), (fast_off, torch_off) = errors[True], errors[False]
    scale = max(1.0, want.abs().max().item())
    assert fast_off <= 2 * torch_off + 1e-6 * scale, errors
    # TF32 keeps 10 mantissa bits, IEEE float32 23: on these sizes its error is orders of magnitude larger.
    assert fast_on > 10 * fast_off, f"the cudnn flag on did not change fastrnn's float32 precision: {errors}"
    if torch_on > 10 * torch_off:  # cuDNN chose TF32 kernels at this shape: then fastrnn at most about as far off
        assert fast_on <= 2 * torch_on + 2.0 ** -10 * scale, errors


_AUTOCAST_CUDA_CASES = [("lstm", 3), ("gru", 3), ("rnn_tanh", 3), ("lstm", 2), ("gru", 2), ("rnn_tanh", 2)]


@pytest.mark.parametrize("autocast_dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
@pytest.mark.parametrize("cell,dims", _AUTOCAST_CUDA_CASES, ids=[f"{c}-{'layer' if d == 3 else 'cell'}"
                                                                   for c, d in _AUTOCAST_CUDA_CASES])
def test_cuda_autocast_matches_torch_nn(cell, dims, autocast_dtype):
    """Under torch.autocast("cuda"), float32 modules return torch.nn's dtype (layers: float16, what cuDNN's
    autocast wrapper casts to whatever the autocast dtype; cells: the autocast dtype), and fastrnn's error
    against the same computation in float64 (from the same rounded weights and input) is at most twice
    torch.nn's, by the project's low-precision rule; gradients flow back in float32."""
    kind = CELL_KINDS[cell]
    torch.manual_seed(0)
    if dims == 3:
        ref = kind.torch_cls(16, 32, **dict(kind.kwargs)).cuda()
        twin = kind.fastrnn_cls(16, 32, **dict(kind.kwargs)).cuda()
        x = torch.randn(5, 4, 16, device="cuda")
    else:
        cell_cls = {"lstm": (torch.nn.LSTMCell, fastrnn.LSTMCell), "gru": (torch.nn.GRUCell, fastrnn.GRUCell),
                    "rnn_tanh": (torch.nn.RNNCell, fastrnn.RNNCell)}[cell]
        ref, twin = cell_cls[0](16, 32).cuda(), cell_cls[1](16, 32).cuda()
        x = torch.randn(4, 16, device="cuda")
    twin.load_state_dict(ref.state_dict())

    def run(module):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cuda", dtype=autocast_dtype):
            out = module(xi)
        first = out[0] if isinstance(out, tuple) else out
        first.float().sum().backward()
        return first, xi.grad

    (out_ref, grad_ref), (out_twin, grad_twin) = run(ref), run(twin)
    assert out_twin.dtype == out_ref.dtype, (out_twin.dtype, out_ref.dtype)
    assert grad_twin.dtype == grad_ref.dtype == torch.float32
    computed = out_ref.dtype  # what torch.nn computed in: round weights and input to it for the float64 oracle
    ref64 = copy.deepcopy(ref)
    with torch.no_grad():
        for p in ref64.parameters():
            p.copy_(p.to(computed))
    ref64 = ref64.double()
    out64 = ref64(x.to(computed).double())
    out64 = out64[0] if isinstance(out64, tuple) else out64
    assert_low_precision_close({"out": out_twin}, {"out": out_ref}, {"out": out64}, computed,
                               what=f"{cell} autocast {autocast_dtype}")


@pytest.mark.parametrize("cell", list(CELL_KINDS))
def test_cuda_double_backward_matches_the_cpu(cell):
    """Double backward on CUDA (which cuDNN cannot do) in float64 equals the CPU's, itself checked against
    torch.nn in test_workflows.py."""
    module, x = _module_and_input(cell)
    module, x = module.double(), x.double()
    results = []
    for device in ("cuda", "cpu"):
        module.to(device)
        leaves = [x.to(device).requires_grad_(), *module.parameters()]
        out, _ = module(leaves[0])
        first = torch.autograd.grad((out ** 2).sum(), leaves, create_graph=True)
        second = torch.autograd.grad(sum((g * g).sum() for g in first), leaves)
        results.append([t.cpu() for t in (*first, *second)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, **tol(torch.float64))


def test_cuda_path_env_is_honoured(monkeypatch):
    """FASTRNN_CUDA_PATH reaches every CUDA call: a bad value is a clear error there, a valid one runs."""
    module, x = _module_and_input("lstm")
    monkeypatch.setenv("FASTRNN_CUDA_PATH", "stepwise")
    stepwise = module(x)[0]
    monkeypatch.setenv("FASTRNN_CUDA_PATH", "persistent")
    torch.testing.assert_close(module(x)[0], stepwise, **tol(torch.float32))
    monkeypatch.setenv("FASTRNN_CUDA_PATH", "fastest")
    with pytest.raises(RuntimeError, match="FASTRNN_CUDA_PATH must be one of auto, stepwise, persistent .* got 'fastest'"):
        module(x)
