"""The workflows around a recurrent layer, each against torch.nn (or, where torch.nn fails, against the
loop it stands for): torch.func (jvp, jacfwd, forward_ad, grad, vjp, jacrev, hessian, per-sample gradients),
double backward and gradgradcheck (the kernels' ops and the device-generic engine's test ops), TorchScript
(trace with its default checks, with and without no_grad; script; save/load) and CPU autocast.

ONNX is in test_onnx.py, quantize_dynamic in test_quantization.py.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vjp, vmap
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from conftest import tol

T, B, I, H = 4, 2, 3, 4

# (class name, constructor kwargs, input kind): every configuration the issue names.
LAYER_CONFIGS = [
    ("LSTM", {}, "padded"),
    ("LSTM", {"num_layers": 2, "bidirectional": True}, "padded"),
    ("LSTM", {"proj_size": 2}, "padded"),
    ("LSTM", {"bias": False, "batch_first": True}, "padded"),
    ("LSTM", {"bidirectional": True}, "packed"),
    ("GRU", {}, "padded"),
    ("GRU", {"num_layers": 2, "bidirectional": True, "bias": False}, "padded"),
    ("GRU", {}, "packed"),
    ("RNN", {"nonlinearity": "tanh"}, "padded"),
    ("RNN", {"nonlinearity": "relu", "bidirectional": True}, "packed"),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2}, "padded"),
]
CELL_CONFIGS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
                ("RNNCell", {"nonlinearity": "relu", "bias": False})]
LENGTHS = torch.tensor([4, 2])  # unsorted below, so enforce_sorted=False permutes


def _id(config):
    return "-".join(str(c) for c in config if not isinstance(c, dict)) + "".join(
        f"-{k}={v}" for k, v in config[1].items())


def pair(name, kwargs, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    ref = getattr(nn, name)(I, H, **kwargs).to(dtype)
    fast = getattr(fastrnn, name)(I, H, **kwargs).to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def layer_input(module, kind, dtype=torch.float64, seed=1):
    """The data tensor (what gets tangents) and a function building the module's input from it."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "packed":
        padded = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(dtype)
        packed = pack_padded_sequence(padded, LENGTHS.flip(0), enforce_sorted=False)
        return packed.data, lambda data: PackedSequence(data, packed.batch_sizes, packed.sorted_indices,
                                                        packed.unsorted_indices)
    shape = (B, T, I) if module.batch_first else (T, B, I)
    return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype), lambda data: data


def layer_hx(module, seed=2, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    D = 2 if module.bidirectional else 1
    P = module.proj_size or module.hidden_size
    h = torch.randn(module.num_layers * D, B, P, generator=gen, dtype=torch.float64).to(dtype)
    if module.mode == "LSTM":
        return h, torch.randn(module.num_layers * D, B, H, generator=gen, dtype=torch.float64).to(dtype)
    return h


def flat_outputs(out):
    """A module's outputs as a tuple of tensors (packed data for a PackedSequence)."""
    y, hidden = out
    y = y.data if isinstance(y, PackedSequence) else y
    return (y, *hidden) if isinstance(hidden, tuple) else (y, hidden)


def layer_function(module, kind, with_hx):
    """f(params, data, hx) -> outputs, the functional form every transform takes."""
    _, build = layer_input(module, kind)

    def f(params, data, hx):
        return flat_outputs(functional_call(module, params, (build(data), hx if with_hx else None)))
    return f


def tangents_like(tree, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.utils._pytree.tree_map(lambda t: torch.randn(t.shape, generator=gen, dtype=t.dtype), tree)


def params_of(module):
    return {k: v.detach() for k, v in module.named_parameters()}


def assert_trees_close(got, want, dtype=torch.float64):
    got_leaves, want_leaves = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for g, w in zip(got_leaves, want_leaves):
        torch.testing.assert_close(g, w, **tol(dtype))


@pytest.fixture(autouse=True)
def _quiet_reference_warning():
    # fastrnn says once that transforms run its reference; here that is the point, not noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fastrnn: .* is active")
        yield


# ----------------------------------------------------------------------------- forward-mode AD

@pytest.mark.parametrize("with_hx", [False, True], ids=["no-hx", "hx"])
@pytest.mark.parametrize("config", LAYER_CONFIGS, ids=_id)
def test_jvp_matches_torch_nn(config, with_hx):
    name, kwargs, kind = config
    ref, fast = pair(name, kwargs)
    data, _ = layer_input(ref, kind)
    hx = layer_hx(ref)
    primals = (params_of(ref), data, hx)
    tangents = tangents_like(primals, seed=5)
    if kind == "packed":
        # torch.nn's packed path fails under torch.func.jvp ("Cannot access data pointer of Tensor that doesn't
        # have storage"): its tangents by the double-vjp trick of torch.autograd.functional.jvp instead.
        flat, spec = torch.utils._pytree.tree_flatten(primals)
        f = layer_function(ref, kind, with_hx)
        want = torch.autograd.functional.jvp(
            lambda *leaves: f(*torch.utils._pytree.tree_unflatten(list(leaves), spec)), tuple(flat),
            tuple(torch.utils._pytree.tree_leaves(tangents)))
    else:
        want = jvp(layer_function(ref, kind, with_hx), primals, tangents)
    got = jvp(layer_function(fast, kind, with_hx), primals, tangents)
    assert any(t.abs().max() > 0 for t in want[1])  # a real tangent, so zeros from fastrnn would fail
    assert_trees_close(got, want)


@pytest.mark.parametrize("config", CELL_CONFIGS, ids=lambda c: _id(c))
def test_cell_jvp_and_jacfwd_match_torch_nn(config):
    name, kwargs = config
    ref, fast = pair(name, kwargs)
    x = torch.randn(B, I, dtype=torch.float64)
    h = torch.randn(B, H, dtype=torch.float64)
    hx = (h, torch.randn(B, H, dtype=torch.float64)) if name == "LSTMCell" else h

    def fn(module):
        return lambda params, x: functional_call(module, params, (x, hx))
    primals = (params_of(ref), x)
    tangents = tangents_like(primals, seed=6)
    assert_trees_close(jvp(fn(fast), primals, tangents), jvp(fn(ref), primals, tangents))
    assert_trees_close(jacfwd(fn(fast), argnums=1)(*primals), jacfwd(fn(ref), argnums=1)(*primals))


def test_forward_ad_dual_tensors_match_torch_nn():
    import torch.autograd.forward_ad as fwAD
    ref, fast = pair("LSTM", {"num_layers": 2, "bidirectional": True})
    x = torch.randn(T, B, I, dtype=torch.float64)
    v = torch.randn_like(x)
    results = []
    for module in (ref, fast):
        with fwAD.dual_level():
            y, (hn, cn) = module(fwAD.make_dual(x, v))
            results.append([fwAD.unpack_dual(t).tangent for t in (y, hn, cn)])
    assert all(t is not None for t in results[1])
    assert_trees_close(results[1], results[0])


def test_jacfwd_of_a_layer_matches_torch_nn():
    ref, fast = pair("GRU", {"bidirectional": True})
    x = torch.randn(T, B, I, dtype=torch.float64)
    assert_trees_close(jacfwd(lambda x: fast(x)[0])(x), jacfwd(lambda x: ref(x)[0])(x))


def test_a_transform_is_said_once():
    _, fast = pair("RNN", {})
    x = torch.randn(T, B, I, dtype=torch.float64)
    fastrnn.functional._warned.discard("transform:a torch.func transform (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jvp(lambda x: fast(x)[0], (x,), (x,))
        jvp(lambda x: fast(x)[0], (x,), (x,))
    said = [w for w in caught if "torch.func transform" in str(w.message)]
    assert len(said) == 1 and "fastrnn.reference" in str(said[0].message)


# ----------------------------------------------------------------------------- reverse-mode transforms

@pytest.mark.parametrize("config", LAYER_CONFIGS, ids=_id)
def test_grad_vjp_jacrev_match_torch_nn(config):
    name, kwargs, kind = config
    ref, fast = pair(name, kwargs)
    data, _ = layer_input(ref, kind)
    hx = layer_hx(ref)
    primals = (params_of(ref), data, hx)

    def loss(module):
        f = layer_function(module, kind, True)
        return lambda p, d, h: sum((o * o).sum() for o in f(p, d, h))
    cotangents = tangents_like(layer_function(ref, kind, True)(*primals), seed=7)
    got_out, got_fn = vjp(layer_function(fast, kind, True), *primals)
    got_grad = grad(loss(fast), argnums=(0, 1, 2))(*primals)
    if kind == "packed":
        # torch.nn's packed path fails under torch.func ("Cannot access data pointer of Tensor that doesn't
        # have storage"): its gradients by plain autograd instead.
        flat, spec = torch.utils._pytree.tree_flatten(primals)
        leaves = [t.clone().requires_grad_() for t in flat]
        out = layer_function(ref, kind, True)(*torch.utils._pytree.tree_unflatten(leaves, spec))
        want_grad = torch.utils._pytree.tree_unflatten(
            list(torch.autograd.grad(sum((o * o).sum() for o in out), leaves, retain_graph=True)), spec)
        want_vjp = torch.utils._pytree.tree_unflatten(list(torch.autograd.grad(out, leaves, cotangents)), spec)
        want_out = out
    else:
        want_grad = grad(loss(ref), argnums=(0, 1, 2))(*primals)
        want_out, want_fn = vjp(layer_function(ref, kind, True), *primals)
        want_vjp = want_fn(cotangents)
    assert_trees_close(got_grad, want_grad)
    assert_trees_close(got_out, want_out)
    assert_trees_close(got_fn(cotangents), want_vjp)
    if kind == "padded":
        assert_trees_close(jacrev(layer_function(fast, kind, True), argnums=1)(*primals),
                           jacrev(layer_function(ref, kind, True), argnums=1)(*primals))


@pytest.mark.parametrize("name,kwargs", [("LSTM", {}), ("GRU", {"bidirectional": True}), ("RNN", {}),
                                         ("LSTMCell", {}), ("GRUCell", {})])
def test_hessian_matches_torch_nn(name, kwargs):
    ref, fast = pair(name, kwargs)
    x = torch.randn(T, B, I, dtype=torch.float64) if not name.endswith("Cell") else torch.randn(B, I).double()

    def loss(module):
        def f(x):
            out = module(x)
            out = out[0] if isinstance(out, tuple) else out
            return out.pow(2).sum()
        return f
    assert_trees_close(hessian(loss(fast))(x), hessian(loss(ref))(x))


@pytest.mark.parametrize("name,kwargs", [("LSTM", {"num_layers": 2}), ("GRU", {"bidirectional": True}),
                                         ("RNN", {"nonlinearity": "relu"}), ("LSTMCell", {}), ("GRUCell", {}),
                                         ("RNNCell", {})])
def test_per_sample_gradients_equal_a_loop_over_samples(name, kwargs):
    """vmap(grad(...)), as DP-SGD tools use it (torch.nn's RNNs fail under vmap), against one grad per sample."""
    _, fast = pair(name, kwargs)
    params = params_of(fast)
    is_cell = name.endswith("Cell")
    xs = torch.randn(5, B, I, dtype=torch.float64) if is_cell else torch.randn(5, T, 1, I, dtype=torch.float64)

    def loss(p, x):
        out = functional_call(fast, p, (x,))
        out = out[0] if isinstance(out, tuple) else out
        return out.pow(2).sum()
    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for n in range(xs.size(0)):
        loop = grad(loss)(params, xs[n])
        assert_trees_close({k: v[n] for k, v in per_sample.items()}, loop)
    # The same loop through plain autograd and fastrnn's kernels: the transform's answer is the kernels' answer.
    x0 = xs[0]
    out = fast(x0)
    (out[0] if isinstance(out, tuple) else out).pow(2).sum().backward()
    assert_trees_close({k: v[0] for k, v in per_sample.items()}, {k: p.grad for k, p in fast.named_parameters()})


def test_vmap_of_the_forward_still_matches_a_loop():
    _, fast = pair("LSTM", {"bidirectional": True})
    xs = torch.randn(3, T, I, dtype=torch.float64)  # unbatched inputs, vmapped
    got = vmap(lambda x: fast(x)[0])(xs)
    for n in range(3):
        torch.testing.assert_close(got[n], fast(xs[n])[0], **tol(torch.float64))


# ----------------------------------------------------------------------------- double backward

def _double_backward(outputs, leaves):
    """The gradients of loss = sum |output|^2 over `leaves` (taken with a graph), and those of the penalty
    sum |gradient|^2: the gradient-penalty pattern (WGAN-GP, input-gradient regularisers)."""
    first = torch.autograd.grad(sum((o * o).sum() for o in outputs), leaves, create_graph=True)
    return first, torch.autograd.grad(sum((g * g).sum() for g in first), leaves)


@pytest.mark.parametrize("config", [c for c in LAYER_CONFIGS if c[2] == "padded"], ids=_id)
def test_double_backward_matches_torch_nn(config):
    name, kwargs, kind = config
    ref, fast = pair(name, kwargs)
    data, _ = layer_input(ref, kind)
    results = []
    for module in (ref, fast):
        x = data.clone().requires_grad_()
        results.append(_double_backward(flat_outputs(module(x, layer_hx(ref))), [x, *module.parameters()]))
    assert_trees_close(results[1], results[0])


@pytest.mark.parametrize("config", [c for c in LAYER_CONFIGS if c[2] == "packed"], ids=_id)
def test_double_backward_packed_matches_torch_nn(config):
    name, kwargs, kind = config
    ref, fast = pair(name, kwargs)
    data, build = layer_input(ref, kind)
    results = []
    for module in (ref, fast):
        x = data.clone().requires_grad_()
        results.append(_double_backward(flat_outputs(module(build(x), layer_hx(ref))), [x, *module.parameters()]))
    assert_trees_close(results[1], results[0])


@pytest.mark.parametrize("config", CELL_CONFIGS, ids=lambda c: _id(c))
def test_cell_double_backward_matches_torch_nn(config):
    name, kwargs = config
    ref, fast = pair(name, kwargs)
    x0 = torch.randn(B, I, dtype=torch.float64)
    results = []
    for module in (ref, fast):
        x = x0.clone().requires_grad_()
        out = module(x)
        out = out if isinstance(out, tuple) else (out,)
        results.append(_double_backward(out, [x, *module.parameters()]))
    assert_trees_close(results[1], results[0])


def _op_args(cell, D, bias, proj, lengths, seed=0):
    """Float64 arguments of one layer op with every differentiable tensor requiring grad."""
    gen = torch.Generator().manual_seed(seed)
    G = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}[cell]
    P = 2 if proj else H

    def r(*shape):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    args = {"x": r(T, B, I), "w_ih": r(D, G * H, I), "b_ih": r(D, G * H) if bias else None, "h0": r(D, B, P)}
    if cell == "lstm":
        args["c0"] = r(D, B, H)
    args.update(w_hh=r(D, G * H, P), b_hh=r(D, G * H) if bias else None)
    if cell == "lstm":
        args["w_hr"] = r(D, P, H) if proj else None
    args["lengths"] = lengths
    return args


OP_CONFIGS = [(cell, D, bias, proj, lengths)
              for cell in ("lstm", "gru", "rnn_tanh", "rnn_relu")
              for D, bias, proj, lengths in ((1, True, False, None), (2, True, False, "unsorted"),
                                             (2, False, False, None), (1, True, True, "sorted"))
              if not (proj and cell != "lstm")]
OP_LENGTHS = {None: None, "sorted": torch.tensor([4, 2]), "unsorted": torch.tensor([1, 4])}


@pytest.mark.parametrize("namespace", ["fastrnn", "fastrnn_engine_test"])
@pytest.mark.parametrize("cell,D,bias,proj,lengths", OP_CONFIGS)
def test_gradgradcheck_of_the_layer_ops(namespace, cell, D, bias, proj, lengths):
    """gradcheck and gradgradcheck in float64 of the kernels' op and of the device-generic engine's (the CUDA
    path's logic, run on the CPU through its test-only ops)."""
    op = getattr(getattr(torch.ops, namespace), f"{cell}_layer")
    args = _op_args(cell, D, bias, proj, OP_LENGTHS[lengths])
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor) and v.requires_grad]

    def f(*tensors):
        call = dict(args, **dict(zip(names, tensors)))
        return op(*call.values(), True)[:-1]  # all but the workspace
    tensors = [args[k] for k in names]
    assert torch.autograd.gradcheck(f, tensors)
    assert torch.autograd.gradgradcheck(f, tensors)
    # gradgradcheck checks the gradient's graph against itself; its values (the differentiable path, taken with
    # create_graph) must also be the first-order kernels' (create_graph=False).
    out = f(*tensors)
    cotangents = tangents_like(out, seed=8)
    with_graph = torch.autograd.grad(out, tensors, cotangents, create_graph=True, allow_unused=True)
    kernels = torch.autograd.grad(f(*tensors), tensors, cotangents, allow_unused=True)
    assert_trees_close(with_graph, kernels)


def test_double_backward_through_the_engine_equals_the_kernels():
    for cell in ("lstm", "gru"):
        args = _op_args(cell, 2, True, False, torch.tensor([3, 4]))
        results = []
        for namespace in ("fastrnn", "fastrnn_engine_test"):
            op = getattr(getattr(torch.ops, namespace), f"{cell}_layer")
            leaves = [v for v in args.values() if isinstance(v, torch.Tensor) and v.requires_grad]
            results.append(_double_backward(op(*args.values(), True)[:-1], leaves))
        assert_trees_close(results[1], results[0])


def test_backward_in_eval_mode_matches_torch_nn():
    ref, fast = pair("LSTM", {"num_layers": 2, "dropout": 0.3})
    ref.eval(), fast.eval()
    x = torch.randn(T, B, I, dtype=torch.float64)
    results = []
    for module in (ref, fast):
        xx = x.clone().requires_grad_()
        module(xx)[0].pow(2).sum().backward()
        results.append([xx.grad] + [p.grad for p in module.parameters()])
    assert_trees_close(results[1], results[0])


# ----------------------------------------------------------------------------- TorchScript

class Tagger(nn.Module):
    """A model whose forward calls a recurrent layer, as users script and trace them."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn
        features = getattr(rnn, "proj_size", 0) or rnn.hidden_size
        self.out = nn.Linear(features * (2 if rnn.bidirectional else 1), 3)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.out(y)


def _taggers(name, kwargs):
    torch.manual_seed(0)
    ref = Tagger(getattr(nn, name)(I, H, **kwargs)).double()
    fast = fastrnn.convert(Tagger(getattr(nn, name)(I, H, **kwargs)).double())
    fast.load_state_dict(ref.state_dict())
    assert isinstance(fast.rnn, getattr(fastrnn, name))
    return ref, fast


def _train_step(model, x):
    model.zero_grad()
    model(x).pow(2).sum().backward()
    return [p.grad.clone() for p in model.parameters()]


TS_CONFIGS = [("LSTM", {"num_layers": 2, "bidirectional": True}), ("GRU", {"batch_first": True}),
              ("RNN", {"nonlinearity": "relu"})]


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore:fastrnn:RuntimeWarning")
@pytest.mark.parametrize("no_grad", [False, True], ids=["grad", "no_grad"])
@pytest.mark.parametrize("name,kwargs", TS_CONFIGS)
def test_jit_trace_with_default_checks_runs_and_trains_like_torch_nn(name, kwargs, no_grad):
    ref, fast = _taggers(name, kwargs)
    x = torch.randn(T, B, I, dtype=torch.float64)
    if no_grad:
        with torch.no_grad():
            traced = torch.jit.trace(fast, (x,))  # check_trace=True, the default
    else:
        traced = torch.jit.trace(fast, (x,))
    x2 = torch.randn(T + 2, B + 1, I, dtype=torch.float64)  # other sizes than traced with
    torch.testing.assert_close(traced(x2), ref(x2), **tol(torch.float64))
    assert_trees_close(_train_step(traced, x2), _train_step(ref, x2))
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    torch.testing.assert_close(loaded(x2), ref(x2), **tol(torch.float64))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore:fastrnn:RuntimeWarning")
@pytest.mark.parametrize("name,kwargs", TS_CONFIGS + [("LSTM", {"proj_size": 2})])
def test_jit_script_save_load_round_trips(name, kwargs):
    ref, fast = _taggers(name, kwargs)
    scripted = torch.jit.script(fast)
    x = torch.randn(B, T, I, dtype=torch.float64) if kwargs.get("batch_first") else torch.randn(T, B, I).double()
    torch.testing.assert_close(scripted(x), ref(x), **tol(torch.float64))
    assert_trees_close(_train_step(scripted, x), _train_step(ref, x))
    # The scripted model trains the very parameters of the fastrnn model.
    with torch.no_grad():
        fast.rnn.weight_hh_l0.add_(0.5)
        ref.rnn.weight_hh_l0.add_(0.5)
    torch.testing.assert_close(scripted(x), ref(x), **tol(torch.float64))
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x), ref(x), **tol(torch.float64))
    # torch.jit.script's __prepare_scriptable__ protocol swaps the submodules of the model it is given: the
    # Python model now holds torch.nn's twin, on the same Parameters (same numbers); convert() swaps back.
    assert type(fast.rnn) is getattr(nn, name)
    torch.testing.assert_close(fast(x), ref(x), **tol(torch.float64))
    fastrnn.convert(fast)
    assert isinstance(fast.rnn, getattr(fastrnn, name))
    torch.testing.assert_close(fast(x), ref(x), **tol(torch.float64))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore:fastrnn:RuntimeWarning")
@pytest.mark.parametrize("name", ["LSTMCell", "GRUCell", "RNNCell"])
def test_jit_script_and_trace_of_cells(name):
    torch.manual_seed(0)
    ref = getattr(nn, name)(I, H).double()
    fast = getattr(fastrnn, name)(I, H).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(B, I, dtype=torch.float64)
    scripted = torch.jit.script(fast)
    traced = torch.jit.trace(fast, (x,))
    for compiled in (scripted, traced):
        assert_trees_close(compiled(x), ref(x))


# ----------------------------------------------------------------------------- CPU autocast

@pytest.mark.parametrize("name,kwargs", [("GRU", {}), ("GRU", {"num_layers": 2, "bidirectional": True}),
                                         ("LSTMCell", {}), ("GRUCell", {})])
def test_cpu_autocast_mixed_precision_equals_torch_nn(name, kwargs):
    """torch.nn computes these with bfloat16 matmuls and a float32 state: fastrnn must give those numbers,
    not its float32 ones (which differ from them by about 1e-3)."""
    ref, fast = pair(name, kwargs, dtype=torch.float32)
    x = torch.randn(B, I) if name.endswith("Cell") else torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, got = ref(x), fast(x)
    float32 = ref(x)
    for g, w, f in zip(*(torch.utils._pytree.tree_leaves(v) for v in (got, want, float32))):
        assert g.dtype == w.dtype == torch.float32
        assert (w - f).abs().max() > 1e-4  # autocast's result really differs from float32's
        torch.testing.assert_close(g, w, rtol=0, atol=0)


# ----------------------------------------------------------------------------- DDP

def test_ddp_training_step_matches_torch_nn(tmp_path):
    """A one-process gloo group: DDP's reducer hooks and bucketing see fastrnn's gradients as torch.nn's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous", rank=0, world_size=1)
    try:
        results = []
        ref, fast = _taggers("LSTM", {"num_layers": 2, "bidirectional": True})
        x = torch.randn(T, B, I, dtype=torch.float64)
        for model in (ref, fast):
            ddp = DistributedDataParallel(model)
            ddp(x).pow(2).sum().backward()
            results.append([p.grad for p in model.parameters()])
        assert_trees_close(results[1], results[0])
    finally:
        dist.destroy_process_group()
