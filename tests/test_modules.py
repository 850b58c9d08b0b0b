"""fastrnn's modules are drop-in twins of torch.nn's: parameters, init, state_dict, attributes, repr,
dropout, parametrizations, dtype conversion, pickling, zero-size batches, and backend_info().

Every comparison is against torch.nn itself, built with the same arguments (and seed).
"""

from __future__ import annotations

import copy
import io
import itertools
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from torch.nn.utils.rnn import pack_padded_sequence

import fastrnn
from fastrnn import functional


pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

# Tolerances per dtype for the same computation done two ways. float64: summation order costs ~1e-14
# relative here, far below rtol 1e-9 (and far below float32's eps, so a float computation would fail).
# Other dtypes: torch.testing's defaults for the dtype (float32: rtol 1.3e-6, atol 1e-5).
_TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-11)}


def assert_close(got, want, **kwargs):
    torch.testing.assert_close(got, want, **_TOLERANCES.get(want.dtype, {}), **kwargs)

# (class name, extra constructor kwargs) for every layer kind; RNN twice, one per nonlinearity.
KINDS = [("LSTM", {}), ("GRU", {}), ("RNN", {"nonlinearity": "tanh"}), ("RNN", {"nonlinearity": "relu"})]
KIND_IDS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]


def layer_configs():
    """Every combination of layers, direction, bias, batch_first (and proj_size for LSTM)."""
    for (name, extra), kid in zip(KINDS, KIND_IDS):
        projs = (0, 3) if name == "LSTM" else (0,)
        for layers, bidir, bias, batch_first, proj in itertools.product((1, 2, 3), (False, True), (True, False),
                                                                         (False, True), projs):
            kwargs = dict(extra, num_layers=layers, bidirectional=bidir, bias=bias, batch_first=batch_first)
            if proj:
                kwargs["proj_size"] = proj
            cid = f"{kid}-L{layers}-{'bi' if bidir else 'uni'}-{'bias' if bias else 'nobias'}" \
                  f"-{'bf' if batch_first else 'tf'}{f'-proj{proj}' if proj else ''}"
            yield pytest.param(name, kwargs, id=cid)


CONFIGS = list(layer_configs())
# A smaller set for the costlier checks: covers each kind with proj, bidirectional, no bias, batch_first.
SMALL_CONFIGS = [
    pytest.param("LSTM", dict(num_layers=2, bidirectional=True, proj_size=2), id="lstm-L2-bi-proj"),
    pytest.param("LSTM", dict(num_layers=1, bias=False, batch_first=True), id="lstm-L1-nobias-bf"),
    pytest.param("GRU", dict(num_layers=2, bidirectional=True, batch_first=True), id="gru-L2-bi-bf"),
    pytest.param("GRU", dict(num_layers=1, bias=False), id="gru-L1-nobias"),
    pytest.param("RNN", dict(num_layers=2, nonlinearity="relu", bidirectional=True), id="rnn_relu-L2-bi"),
    pytest.param("RNN", dict(num_layers=3, nonlinearity="tanh", bias=False), id="rnn_tanh-L3-nobias"),
]
CELLS = [("LSTMCell", {}), ("GRUCell", {}), ("RNNCell", {"nonlinearity": "tanh"}),
         ("RNNCell", {"nonlinearity": "relu"})]
CELL_IDS = ["lstmcell", "grucell", "rnncell_tanh", "rnncell_relu"]
CELL_PARAMS = [pytest.param(n, k, id=i) for (n, k), i in zip(CELLS, CELL_IDS)]

I, H = 4, 6


def pair(name, kwargs, seed=0, input_size=I, hidden_size=H, **factory):
    """(torch.nn module, fastrnn module) built from the same seed, so with identical parameters."""
    torch.manual_seed(seed)
    ref = getattr(nn, name)(input_size, hidden_size, **kwargs, **factory)
    torch.manual_seed(seed)
    ours = getattr(fastrnn, name)(input_size, hidden_size, **kwargs, **factory)
    return ref, ours


def make_input(module, T=5, B=3, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, module.input_size) if getattr(module, "batch_first", False) else (T, B, module.input_size)
    return torch.randn(shape, generator=g, dtype=dtype)


def make_hx(module, B=3, dtype=torch.float64, seed=2):
    g = torch.Generator().manual_seed(seed)
    D = 2 if module.bidirectional else 1
    P = module.proj_size if module.proj_size > 0 else module.hidden_size
    h = torch.randn(module.num_layers * D, B, P, generator=g, dtype=dtype)
    if module.mode == "LSTM":
        return h, torch.randn(module.num_layers * D, B, module.hidden_size, generator=g, dtype=dtype)
    return h


def assert_outputs_equal(got, want, exact=False):
    """Compares (output, hidden) pairs, PackedSequence and LSTM (h, c) included, at the dtype's tolerance."""
    got_flat, want_flat = _flatten(got), _flatten(want)
    assert len(got_flat) == len(want_flat)
    for g, w in zip(got_flat, want_flat):
        if exact:
            assert torch.equal(g, w)
        else:
            assert_close(g, w)


def _flatten(x):
    if isinstance(x, torch.nn.utils.rnn.PackedSequence):
        return [x.data, x.batch_sizes] + [t for t in (x.sorted_indices, x.unsorted_indices) if t is not None]
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in _flatten(item)]
    return [x]


# ------------------------------------------------------------------ parameters and initialisation

@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_parameter_names_shapes_order_and_init_match_torch(name, kwargs):
    ref, ours = pair(name, kwargs, seed=123)
    got = [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in ours.named_parameters()]
    want = [(n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in ref.named_parameters()]
    assert got == want
    assert ours._flat_weights_names == ref._flat_weights_names
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    # Same seed, same draws in the same order: identical values.
    for (n, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("name, kwargs", CONFIGS[:: max(1, len(CONFIGS) // 12)])
def test_different_seeds_give_different_parameters(name, kwargs):
    """The identical-init test above is not vacuous: parameters do depend on the seed."""
    _, a = pair(name, kwargs, seed=1)
    _, b = pair(name, kwargs, seed=2)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert not torch.equal(p, q), n


@pytest.mark.parametrize("name, kwargs", CELL_PARAMS)
@pytest.mark.parametrize("bias", [True, False])
def test_cell_parameters_and_init_match_torch(name, kwargs, bias):
    ref, ours = pair(name, dict(kwargs, bias=bias), seed=7)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]
    for p, q in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    assert repr(ours) == repr(ref)
    assert isinstance(ours, nn.RNNCellBase)
    assert not isinstance(ours, getattr(nn, name))


@pytest.mark.parametrize("name, kwargs", CONFIGS)
def test_repr_mode_and_attributes_match_torch(name, kwargs):
    ref, ours = pair(name, kwargs)
    assert ours.extra_repr() == ref.extra_repr()
    assert repr(ours) == repr(ref).replace(type(ref).__name__, type(ours).__name__, 1)
    assert ours.mode == ref.mode
    for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                 "proj_size"):
        assert getattr(ours, attr) == getattr(ref, attr), attr
    if name == "RNN":
        assert ours.nonlinearity == ref.nonlinearity


def test_repr_shows_every_argument_like_torch():
    kwargs = dict(num_layers=2, bias=False, batch_first=True, dropout=0.25, bidirectional=True, proj_size=2)
    ref, ours = pair("LSTM", kwargs)
    assert repr(ours) == repr(ref) == "LSTM(4, 6, proj_size=2, num_layers=2, bias=False, batch_first=True, " \
                                      "dropout=0.25, bidirectional=True)"


@pytest.mark.parametrize("name, kwargs", SMALL_CONFIGS)
def test_all_weights_are_the_module_parameters(name, kwargs):
    ref, ours = pair(name, kwargs)
    assert [[tuple(w.shape) for w in layer] for layer in ours.all_weights] == \
           [[tuple(w.shape) for w in layer] for layer in ref.all_weights]
    params = dict(ours.named_parameters())
    names = iter(ours._flat_weights_names)
    for layer in ours.all_weights:
        for w in layer:
            assert w is params[next(names)]


@pytest.mark.parametrize("name, kwargs", SMALL_CONFIGS)
def test_flatten_parameters_is_a_no_op(name, kwargs):
    _, ours = pair(name, kwargs)
    x = make_input(ours, dtype=torch.float32)
    before = ours(x)
    params = list(ours.parameters())
    ptrs = [p.data_ptr() for p in params]
    ours.flatten_parameters()
    assert all(p is q for p, q in zip(params, ours.parameters()))
    assert [p.data_ptr() for p in ours.parameters()] == ptrs
    assert_outputs_equal(ours(x), before, exact=True)


def test_class_relations():
    """Documented: twins subclass nn.RNNBase (not nn.LSTM & co, which torch.compile refuses to trace)."""
    for name, kwargs in KINDS:
        m = getattr(fastrnn, name)(3, 4, **kwargs)
        assert isinstance(m, nn.RNNBase)
        assert not isinstance(m, (nn.LSTM, nn.GRU, nn.RNN))
        assert type(m).__name__ == name


# ------------------------------------------------------------------ state_dict

@pytest.mark.parametrize("name, kwargs", CONFIGS[::3])
def test_state_dict_interchangeable_both_directions(name, kwargs):
    torch.manual_seed(0)
    ref = getattr(nn, name)(I, H, **kwargs).double()
    ours = getattr(fastrnn, name)(I, H, **kwargs).double()
    torch.manual_seed(99)  # a different init for the second torch.nn module
    ref2 = getattr(nn, name)(I, H, **kwargs).double()
    x, hx = make_input(ref), make_hx(ref)

    # torch.nn -> fastrnn
    assert not all(torch.equal(p, q) for p, q in zip(ours.parameters(), ref.parameters()))
    assert ours.load_state_dict(ref.state_dict(), strict=True) == nn.modules.module._IncompatibleKeys([], [])
    assert_outputs_equal(ours(x, hx), ref(x, hx))
    assert_outputs_equal(ours(x), ref(x))

    # fastrnn -> torch.nn
    ref2.load_state_dict(ours.state_dict(), strict=True)
    assert_outputs_equal(ref2(x, hx), ours(x, hx))


@pytest.mark.parametrize("cell, kwargs", CELL_PARAMS)
def test_cell_state_dict_interchangeable(cell, kwargs):
    torch.manual_seed(0)
    ref = getattr(nn, cell)(I, H, **kwargs).double()
    torch.manual_seed(1)
    ours = getattr(fastrnn, cell)(I, H, **kwargs).double()
    x = torch.randn(3, I, dtype=torch.float64)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert_outputs_equal(ours(x), ref(x))
    torch.manual_seed(2)
    ref2 = getattr(nn, cell)(I, H, **kwargs).double()
    ref2.load_state_dict(ours.state_dict(), strict=True)
    assert_outputs_equal(ref2(x), ours(x))


def test_state_dict_with_wrong_keys_is_rejected_like_torch():
    ref = nn.LSTM(I, H, num_layers=2)
    ours = fastrnn.LSTM(I, H, num_layers=1)
    with pytest.raises(RuntimeError, match="Unexpected key"):
        ours.load_state_dict(ref.state_dict(), strict=True)


# ------------------------------------------------------------------ dropout

def test_dropout_with_one_layer_warns_like_torch():
    for lib in (nn, fastrnn):
        for name, kwargs in KINDS:
            with pytest.warns(UserWarning, match=r"non-zero dropout expects num_layers greater than 1, "
                                                 r"but got dropout=0\.5 and num_layers=1"):
                getattr(lib, name)(3, 4, dropout=0.5, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastrnn.LSTM(3, 4, num_layers=2, dropout=0.5)
        fastrnn.GRU(3, 4, num_layers=1, dropout=0.0)


DROPOUT_CASES = [
    pytest.param(name, extra, layers, bidir, packed, dtype,
                 id=f"{kid}-L{layers}-{'bi' if bidir else 'uni'}-{'packed' if packed else 'padded'}-{str(dtype)[6:]}")
    for (name, extra), kid in zip(KINDS[:3], KIND_IDS[:3])
    for layers in (2, 3) for bidir in (False, True) for packed in (False, True)
    for dtype in (torch.float64, torch.float32)
]


def _dropout_input(module, dtype, packed):
    T, B = 6, 4
    x = torch.randn(T, B, module.input_size, generator=torch.Generator().manual_seed(3), dtype=dtype)
    if packed:
        return pack_padded_sequence(x, torch.tensor([3, 6, 1, 4]), enforce_sorted=False)
    return x


@pytest.mark.parametrize("name, extra, layers, bidir, packed, dtype", DROPOUT_CASES)
def test_training_dropout_reproduces_torch_masks(name, extra, layers, bidir, packed, dtype):
    ref, ours = pair(name, dict(extra, num_layers=layers, bidirectional=bidir, dropout=0.4), seed=11, dtype=dtype)
    x = _dropout_input(ref, dtype, packed)
    ref.train()
    ours.train()
    x_ref = x if packed else x.clone().requires_grad_()
    x_ours = x if packed else x.clone().requires_grad_()

    torch.manual_seed(1234)
    want = ref(x_ref)
    rng_after_ref = torch.get_rng_state()
    torch.manual_seed(1234)
    got = ours(x_ours)
    # The same masks, drawn by the same number of RNG calls: same outputs and same RNG state afterwards.
    assert torch.equal(torch.get_rng_state(), rng_after_ref)
    assert_outputs_equal(got, want)

    # Gradients flow through the same masks.
    out_ref = want[0].data if packed else want[0]
    out_ours = got[0].data if packed else got[0]
    g = torch.randn(out_ref.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    grads_ref = torch.autograd.grad((out_ref * g).sum(), list(ref.parameters()))
    grads_ours = torch.autograd.grad((out_ours * g).sum(), list(ours.parameters()))
    for a, b in zip(grads_ours, grads_ref):
        assert_close(a, b)

    # The comparison above can fail: dropout is active, and a different seed draws different masks.
    ours.eval()
    no_dropout = ours(x)
    ours.train()
    torch.manual_seed(4321)
    other_seed = ours(x)
    out = lambda r: r[0].data if packed else r[0]  # noqa: E731
    assert not torch.allclose(out(got), out(no_dropout))
    assert not torch.allclose(out(got), out(other_seed))


@pytest.mark.parametrize("name, extra", [pytest.param(n, k, id=i) for (n, k), i in zip(KINDS, KIND_IDS)])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_no_dropout_in_eval_mode(name, extra, packed):
    ref, ours = pair(name, dict(extra, num_layers=3, bidirectional=True, dropout=0.6), seed=5, dtype=torch.float64)
    ref.eval()
    ours.eval()
    x = _dropout_input(ref, torch.float64, packed)
    torch.manual_seed(0)
    first = ours(x)
    rng = torch.get_rng_state()
    torch.manual_seed(1)
    second = ours(x)
    assert_outputs_equal(first, second, exact=True)  # no randomness at all
    torch.manual_seed(0)
    ours(x)
    assert torch.equal(torch.get_rng_state(), rng)  # and no RNG draws
    assert_outputs_equal(first, ref(x))
    # Same as a twin built without dropout.
    no_drop = getattr(fastrnn, name)(I, H, **dict(extra, num_layers=3, bidirectional=True)).double()
    no_drop.load_state_dict(ours.state_dict())
    assert_outputs_equal(no_drop(x), first)


# ------------------------------------------------------------------ weights read on every forward

@pytest.mark.parametrize("name, kwargs", SMALL_CONFIGS)
def test_weight_norm_parametrization_matches_torch(name, kwargs):
    ref, ours = pair(name, kwargs, seed=3, dtype=torch.float64)
    weight_norm(ref, "weight_hh_l0")
    weight_norm(ours, "weight_hh_l0")
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    x = make_input(ref)
    before = ours(x)
    assert_outputs_equal(before, ref(x))

    # Gradients reach the parametrization's originals, as in torch.nn.
    for m in (ref, ours):
        m.zero_grad()
        out = m(x)[0]
        (out * out).sum().backward()
    for (n, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert_close(p.grad, q.grad, msg=n)

    # Changing the magnitude changes the weight used by the very next forward.
    with torch.no_grad():
        for m in (ref, ours):
            m.parametrizations.weight_hh_l0.original0.mul_(1.7)
    after = ours(x)
    assert not torch.allclose(after[0], before[0])
    assert_outputs_equal(after, ref(x))


@pytest.mark.parametrize("name, kwargs", SMALL_CONFIGS)
def test_replacing_a_parameter_is_picked_up(name, kwargs):
    ref, ours = pair(name, kwargs, seed=4, dtype=torch.float64)
    x = make_input(ref)
    before = ours(x)
    g = torch.Generator().manual_seed(8)
    for pname in ("weight_hh_l0", "weight_ih_l0"):
        new = torch.randn(getattr(ours, pname).shape, generator=g, dtype=torch.float64)
        setattr(ref, pname, nn.Parameter(new.clone()))
        setattr(ours, pname, nn.Parameter(new.clone()))
    after = ours(x)
    assert not torch.allclose(after[0], before[0])
    assert_outputs_equal(after, ref(x))
    # In-place changes too (what an optimizer step does).
    with torch.no_grad():
        for m in (ref, ours):
            m.weight_hh_l0.mul_(-0.5)
    assert_outputs_equal(ours(x), ref(x))


# ------------------------------------------------------------------ shapes: zero-size batch, meta device

@pytest.mark.parametrize("name, kwargs", SMALL_CONFIGS + [
    pytest.param("LSTM", dict(num_layers=3, dropout=0.3), id="lstm-L3-dropout-train")])
@pytest.mark.parametrize("with_hx", [False, True], ids=["no_hx", "hx"])
def test_zero_size_batch(name, kwargs, with_hx):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref, ours = pair(name, kwargs)
    x = make_input(ref, B=0, dtype=torch.float32).requires_grad_()
    args = (x, make_hx(ref, B=0, dtype=torch.float32)) if with_hx else (x,)
    want = ref(*args)
    got = ours(*args)
    assert [t.shape for t in _flatten(got)] == [t.shape for t in _flatten(want)]
    assert all(t.numel() == 0 for t in _flatten(got))
    assert [t.dtype for t in _flatten(got)] == [t.dtype for t in _flatten(want)]
    got[0].sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("cell, kwargs", CELL_PARAMS)
def test_cell_zero_size_batch(cell, kwargs):
    ref, ours = pair(cell, kwargs)
    x = torch.randn(0, I)
    assert [t.shape for t in _flatten(ours(x))] == [t.shape for t in _flatten(ref(x))]


@pytest.mark.parametrize("name, kwargs", SMALL_CONFIGS)
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_meta_device_forward_gives_torch_shapes(name, kwargs, packed):
    """Shape-only runs (deferred init, FLOP counting) on the 'meta' device work as with torch.nn."""
    ref, ours = pair(name, kwargs, device="meta")
    x = make_input(ref, dtype=torch.float32)
    if packed:
        x = pack_padded_sequence(x, torch.tensor([5, 2, 4]), batch_first=ref.batch_first,
                                 enforce_sorted=False).to("meta")
    else:
        x = x.to("meta")
    want, got = ref(x), ours(x)
    assert [(t.shape, t.device.type) for t in _flatten(got)] == [(t.shape, t.device.type) for t in _flatten(want)]


# ------------------------------------------------------------------ backend_info

def test_backend_info():
    info = fastrnn.backend_info()
    documented = {"version", "extension_loaded", "extension_error", "cpu_kernels", "cuda_kernels", "cuda_archs",
                  "built_with_torch", "running_torch", "torch_cuda"}
    assert documented <= set(info)
    assert info["version"] == fastrnn.__version__
    assert info["extension_loaded"] is True
    assert info["extension_error"] is None
    assert info["cpu_kernels"] is True
    assert isinstance(info["cuda_kernels"], bool)
    assert isinstance(info["cuda_archs"], list)
    if not info.get("cuda_compiled", bool(info["cuda_archs"])):
        assert info["cuda_kernels"] is False and info["cuda_archs"] == []
    assert all(a.startswith("sm_") and a[3:].isdigit() for a in info["cuda_archs"])
    assert info["running_torch"] == torch.__version__
    assert info["built_with_torch"] == torch.__version__.split("+")[0]
    assert info["torch_cuda"] == torch.version.cuda


def test_cpu_forward_runs_the_compiled_kernels_without_warning():
    assert functional.implementation_for(torch.device("cpu")) is functional.rnn
    m = fastrnn.GRU(3, 4, num_layers=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m(torch.randn(5, 2, 3))


# ------------------------------------------------------------------ dtype conversion, pickling

@pytest.mark.parametrize("name, kwargs", SMALL_CONFIGS)
def test_dtype_conversions(name, kwargs):
    ref, ours = pair(name, kwargs, seed=6)
    params = list(ours.parameters())
    x32 = make_input(ref, dtype=torch.float32)

    for convert in (lambda m: m.double(), lambda m: m.float(), lambda m: m.to(torch.float64),
                    lambda m: m.to("cpu", torch.float32), lambda m: m.to(dtype=torch.float64)):
        assert convert(ours) is ours
        convert(ref)
        dtype = next(ref.parameters()).dtype
        assert all(p.dtype == dtype for p in ours.parameters())
        assert all(p is q for p, q in zip(params, ours.parameters()))  # converted in place, same Parameters
        x = x32.to(dtype)
        assert_outputs_equal(ours(x), ref(x))
        assert ours(x)[0].dtype == dtype


@pytest.mark.parametrize("name, kwargs", SMALL_CONFIGS)
def test_deepcopy_and_pickle(name, kwargs):
    _, ours = pair(name, kwargs, seed=9)
    ours.eval()
    x = make_input(ours, dtype=torch.float32)
    want = ours(x)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours)), torch.load(buffer, weights_only=False)):
        assert type(clone) is type(ours)
        assert repr(clone) == repr(ours)
        assert clone.training is False
        for p, q in zip(clone.parameters(), ours.parameters()):
            assert p is not q and torch.equal(p, q)
        assert_outputs_equal(clone(x), want, exact=True)
        # Independent copies: changing the clone leaves the original alone.
        with torch.no_grad():
            clone.weight_hh_l0.add_(1.0)
        assert_outputs_equal(ours(x), want, exact=True)


@pytest.mark.parametrize("cell, kwargs", CELL_PARAMS)
def test_cell_conversions_and_copies(cell, kwargs):
    ref, ours = pair(cell, kwargs, seed=10)
    ref.double()
    ours.double()
    x = torch.randn(3, I, dtype=torch.float64)
    assert_outputs_equal(ours(x), ref(x))
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(clone) is type(ours)
        assert_outputs_equal(clone(x), ours(x), exact=True)


# ----------------------------------------------------------------------------- CPU autocast

_AUTOCAST_CASES = [(nn.LSTM, fastrnn.LSTM, 3), (nn.GRU, fastrnn.GRU, 3), (nn.RNN, fastrnn.RNN, 3),
                   (nn.LSTMCell, fastrnn.LSTMCell, 2), (nn.GRUCell, fastrnn.GRUCell, 2),
                   (nn.RNNCell, fastrnn.RNNCell, 2)]


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("torch_cls,fastrnn_cls,dims", _AUTOCAST_CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_cpu_autocast_matches_torch_nn(torch_cls, fastrnn_cls, dims, autocast_dtype):
    """Under torch.autocast("cpu"), each module returns torch.nn's dtype (the autocast dtype for LSTM, RNN and
    RNNCell; float32 for GRU, LSTMCell and GRUCell), with float32 weights, input and hx, and gradients flow."""
    torch.manual_seed(0)
    ref = torch_cls(4, 8)
    twin = fastrnn_cls(4, 8)
    twin.load_state_dict(ref.state_dict())
    x = torch.randn(*((5, 3, 4) if dims == 3 else (3, 4)))
    hx = torch.randn(*((1, 3, 8) if dims == 3 else (3, 8)))
    if torch_cls in (nn.LSTM, nn.LSTMCell):
        hx = (hx, torch.randn_like(hx))

    def run(module, autocast):
        xi = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast):
            out = module(xi, hx)
        first = out[0] if isinstance(out, tuple) else out
        first.float().sum().backward()
        return first, xi.grad

    ref_autocast = True
    if torch_cls is nn.LSTM:
        try:
            run(ref, True)
        except RuntimeError as e:
            # torch.nn.LSTM runs on oneDNN on the CPU, which has no float16 LSTM, and a bfloat16 one only on
            # CPUs with AVX-512 (an AVX2-only machine raises for both): there torch.nn raises. fastrnn runs it in the autocast
            # dtype, as torch.nn does where it can; the oracle is then torch.nn in float32, which differs from
            # an autocast result by the same roundings as two autocast results differ (bound below).
            assert "primitive descriptor" in str(e), e
            ref_autocast = False
    (out_ref, grad_ref), (out_twin, grad_twin) = run(ref, ref_autocast), run(twin, True)
    if not ref_autocast:
        assert out_twin.dtype == autocast_dtype
        out_ref = out_ref.to(autocast_dtype)
    assert out_twin.dtype == out_ref.dtype
    # Both sides round inputs, weights and GEMM results to the autocast dtype (torch.nn does so even where it
    # returns float32; fastrnn's GRU and cells compute in float32 there), each within about half an ulp of
    # the output's scale per rounding; two such results agree to about one ulp of that scale, and 2 ulps
    # leave room for what the 5 steps accumulate. Measured: at most 0.5 ulp.
    eps = torch.finfo(autocast_dtype).eps
    for got, want in ((out_twin, out_ref), (grad_twin, grad_ref)):
        scale = max(1.0, want.float().abs().max().item())
        err = (got.float() - want.float()).abs().max().item()
        assert err <= 2 * eps * scale, f"max |fastrnn - torch.nn| = {err:.3g} > 2 eps * {scale:.3g}"
