"""PyTorch's own contract for torch.nn's recurrent modules, run against fastrnn's twins.

1. The module_db entries of torch.testing._internal.common_modules (the cases torch's test_modules.py
   runs) for nn.RNN, LSTM, GRU, RNNCell, LSTMCell and GRUCell: for every ModuleInput the fastrnn twin,
   built with the same constructor arguments and holding torch.nn's state_dict, gives torch.nn's outputs
   and the same gradients of the inputs and of every parameter (float64 and float32); every
   module_error_input raises the error class with a message matching the error_regex torch gives (the
   semantics of test_modules.py's test_errors: assertRaisesRegex, i.e. isinstance and re.search), and
   the class torch.nn raises itself, with fastrnn's message leading with torch.nn's.
2. The checks of torch's test/test_nn.py about errors and messages of these modules (test_rnn_args_check,
   test_rnn_proj_args_check, test_RNN_cell_no_broadcasting, test_rnn_check_device on the meta device,
   test_projections_errors_on_gru_and_rnn, test_RNN_nonlinearity, test_RNN_cell_forward_zero_hidden_size,
   test_RNN_input_size_zero), and test_autocast's dtype-mismatch case, each comparing fastrnn with torch.nn.

No expected value is written down here: torch.nn computes every one.
"""

from __future__ import annotations

import re
import warnings
from itertools import product

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

import fastrnn
from conftest import tol


def _load_module_db():
    """torch's module_db, imported without the global changes torch's test harness makes on import (which would
    leak into the other tests of this session): common_utils freezes torch.backends' flags
    (disable_global_flags, so that a later `torch.backends.cudnn.allow_tf32 = ...` raises) and wraps
    TorchScript's call methods."""
    saved_calls = torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__
    saved_dtype = torch.get_default_dtype()
    from torch.testing._internal import common_modules

    torch._C.ScriptFunction.__call__, torch._C.ScriptMethod.__call__ = saved_calls
    setattr(torch.backends, "__allow_nonbracketed_mutation_flag", True)
    torch.set_default_dtype(saved_dtype)
    return common_modules


common_modules = _load_module_db()
ModuleErrorEnum = common_modules.ModuleErrorEnum

TWINS = {nn.RNN: fastrnn.RNN, nn.LSTM: fastrnn.LSTM, nn.GRU: fastrnn.GRU, nn.RNNCell: fastrnn.RNNCell,
         nn.LSTMCell: fastrnn.LSTMCell, nn.GRUCell: fastrnn.GRUCell}
INFOS = {info.module_cls: info for info in common_modules.module_db if info.module_cls in TWINS}
assert set(INFOS) == set(TWINS), f"module_db lacks {set(TWINS) - set(INFOS)}"
NAMES = [cls.__name__ for cls in TWINS]
LAYERS = (nn.RNN, nn.GRU)  # (their inputs function also makes PackedSequence inputs on request)


def _module_inputs(nn_cls, dtype, training):
    info = INFOS[nn_cls]
    extra = {"with_packed_sequence": True} if nn_cls in LAYERS else {}
    return info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training, **extra)


# ---------------------------------------------------------------- helpers

def _clone(obj):
    """A fresh copy of a forward argument (tensors as new leaves with the same requires_grad)."""
    if isinstance(obj, PackedSequence):
        return PackedSequence(_clone(obj.data), obj.batch_sizes, obj.sorted_indices, obj.unsorted_indices)
    if isinstance(obj, Tensor):
        return obj.detach().clone().requires_grad_(obj.requires_grad)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_clone(o) for o in obj)
    return obj



def _tensors(obj, prefix="out"):
    """(path, tensor) for every tensor inside obj (outputs, inputs; a PackedSequence by its fields)."""
    if isinstance(obj, PackedSequence):
        yield from _tensors(tuple(obj), prefix)
    elif isinstance(obj, Tensor):
        yield prefix, obj
    elif isinstance(obj, (tuple, list)):
        for i, o in enumerate(obj):
            yield from _tensors(o, f"{prefix}[{i}]")


def _build(nn_cls, args, kwargs, dtype, training):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = nn_cls(*args, **kwargs).to(dtype)
        twin = TWINS[nn_cls](*args, **kwargs).to(dtype)
    twin.load_state_dict(reference.state_dict())
    return reference.train(training), twin.train(training)


def _run(module, args, kwargs):
    """Outputs, and the gradients of the inputs and parameters of a fixed random weighting of every output."""
    args, kwargs = _clone(args), _clone(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = module(*args, **kwargs)
    outs = [(k, t) for k, t in _tensors(out) if t.is_floating_point()]
    gen = torch.Generator().manual_seed(7)
    loss = sum((t * torch.randn(t.shape, generator=gen, dtype=t.dtype)).sum() for _, t in outs)
    leaves = [(k, t) for k, t in _tensors((args, kwargs), "input") if t.requires_grad]
    params = list(module.named_parameters())
    grads = torch.autograd.grad(loss, [t for _, t in leaves] + [p for _, p in params], allow_unused=True)
    results = {k: t.detach() for k, t in _tensors(out)}
    for (k, t), g in zip(leaves + params, grads):
        results[f"grad {k}"] = torch.zeros_like(t) if g is None else g
    return results


def _assert_same_results(twin_results, torch_results, dtype, what):
    assert twin_results.keys() == torch_results.keys(), what
    for key, expected in torch_results.items():
        actual = twin_results[key]
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, f"{what} [{key}]"
        if expected.is_floating_point():
            torch.testing.assert_close(actual, expected, **tol(dtype), msg=lambda m, k=key: f"{what} [{k}]: {m}")
        else:
            assert torch.equal(actual, expected), f"{what} [{key}]"


def _caught(call):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call()
    except Exception as e:  # noqa: BLE001 (the very exception is what is compared)
        return e
    return None


def _assert_same_error(twin_call, torch_call, *, lead=True):
    """fastrnn raises the exception class torch.nn raises, and (lead) its message starts with torch.nn's."""
    expected, actual = _caught(torch_call), _caught(twin_call)
    assert expected is not None, "torch.nn raised nothing: not an error case"
    assert actual is not None, f"fastrnn raised nothing where torch.nn raised {type(expected).__name__}: {expected}"
    assert type(actual) is type(expected), (f"fastrnn raised {type(actual).__name__}: {actual}\n"
                                            f"torch.nn raised {type(expected).__name__}: {expected}")
    if lead:
        assert str(actual).startswith(str(expected)), f"fastrnn: {actual}\ntorch.nn: {expected}"
    return actual, expected


# ---------------------------------------------------------------- 1. module_db: module_inputs

def _batch_of_three(t, dim):
    """An unbatched tensor made a batch of three different rows along dim (requires_grad kept)."""
    t = t.detach()
    return torch.stack([t, 0.5 * t, -t], dim).requires_grad_(True)


def _variants(nn_cls, module_input):
    """The ModuleInput's forward arguments as given, and also (where they differ) with hx omitted and, for
    unbatched input, batched: torch's inputs give hx to every cell and are all unbatched but for the packed ones."""
    args, kwargs = module_input.forward_input.args, module_input.forward_input.kwargs
    variants = [("as given", args, kwargs)]
    if len(args) > 1:
        variants.append(("hx omitted", args[:1], kwargs))
    x = args[0]
    is_layer = nn_cls in (nn.RNN, nn.GRU, nn.LSTM)
    if isinstance(x, Tensor) and x.dim() == (2 if is_layer else 1):
        batch_first = module_input.constructor_input.kwargs.get("batch_first", False)
        x_dim, h_dim = (0 if batch_first else 1, 1) if is_layer else (0, 0)
        batched = [_batch_of_three(x, x_dim)]
        if len(args) > 1:
            hx = args[1]
            batched.append(tuple(_batch_of_three(h, h_dim) for h in hx) if isinstance(hx, tuple)
                           else _batch_of_three(hx, h_dim))
        variants.append(("batched", tuple(batched), kwargs))
        variants.append(("batched, hx omitted", tuple(batched[:1]), kwargs))
    return variants


def _input_cases():
    for nn_cls, dtype, training in product(TWINS, (torch.float64, torch.float32), (True, False)):
        for i, module_input in enumerate(_module_inputs(nn_cls, dtype, training)):
            for label, _, _ in _variants(nn_cls, module_input):
                yield pytest.param(nn_cls, dtype, training, i, label,
                                   id=f"{nn_cls.__name__}-{str(dtype)[6:]}-{'train' if training else 'eval'}-{i}-"
                                      + label.replace(", ", "-").replace(" ", "_"))


@pytest.mark.parametrize("nn_cls, dtype, training, index, variant", list(_input_cases()))
def test_module_inputs_match_torch_nn(nn_cls, dtype, training, index, variant):
    module_input = _module_inputs(nn_cls, dtype, training)[index]
    args, kwargs = next((a, k) for label, a, k in _variants(nn_cls, module_input) if label == variant)
    c = module_input.constructor_input
    reference, twin = _build(nn_cls, c.args, c.kwargs, dtype, training)
    what = f"{nn_cls.__name__}({c.args}, {c.kwargs}) on {[tuple(t.shape) for _, t in _tensors(args)]}"
    _assert_same_results(_run(twin, args, kwargs), _run(reference, args, kwargs), dtype, what)


def test_module_inputs_cover_what_they_should():
    """The cases above cover, for every class, hx given and omitted, batched and unbatched input, PackedSequence
    input for the layers, and every constructor flag torch's inputs vary."""
    for nn_cls in TWINS:
        inputs = _module_inputs(nn_cls, torch.float64, True)
        variants = [v for m in inputs for v in _variants(nn_cls, m)]
        assert {len(args) > 1 for _, args, _ in variants} == {True, False}, nn_cls
        unbatched_dim = 2 if nn_cls in (nn.RNN, nn.GRU, nn.LSTM) else 1
        dims = {args[0].dim() for _, args, _ in variants if isinstance(args[0], Tensor)}
        assert dims == {unbatched_dim, unbatched_dim + 1}, (nn_cls, dims)
        if nn_cls in LAYERS:
            assert any(isinstance(args[0], PackedSequence) for _, args, _ in variants), nn_cls
        flags = {k for m in inputs for k in m.constructor_input.kwargs}
        if nn_cls in (nn.RNN, nn.GRU, nn.LSTM):
            assert {"bias", "batch_first", "bidirectional", "num_layers"} <= flags, flags
        if nn_cls is nn.LSTM:
            assert {m.constructor_input.kwargs["proj_size"] for m in inputs} == {0, 2}


# ---------------------------------------------------------------- 1. module_db: module_error_inputs

def _error_cases():
    for nn_cls, dtype in product(TWINS, (torch.float64, torch.float32)):
        info = INFOS[nn_cls]
        errors = info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=True)
        for i, e in enumerate(errors):
            yield pytest.param(nn_cls, dtype, i, id=f"{nn_cls.__name__}-{str(dtype)[6:]}-{i}-{e.error_regex[:40]}")


def _error_input(nn_cls, dtype, index):
    info = INFOS[nn_cls]
    return info.module_error_inputs_func(info, device="cpu", dtype=dtype, requires_grad=False, training=True)[index]


@pytest.mark.parametrize("nn_cls, dtype, index", list(_error_cases()))
def test_module_error_inputs(nn_cls, dtype, index):
    error_input = _error_input(nn_cls, dtype, index)
    module_input = error_input.module_error_input
    c = module_input.constructor_input
    if error_input.error_on == ModuleErrorEnum.CONSTRUCTION_ERROR:
        def call(cls):
            return lambda: cls(*c.args, **c.kwargs)
    else:
        f = module_input.forward_input

        def call(cls):
            def run():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = cls(*c.args, **c.kwargs)
                m(*_clone(f.args), **_clone(f.kwargs))
            return run
    # torch's test_errors: self.assertRaisesRegex(error_type, error_regex)
    for lib_cls in (TWINS[nn_cls], nn_cls):
        with pytest.raises(error_input.error_type) as info:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call(lib_cls)()
        assert re.search(error_input.error_regex, str(info.value)), (lib_cls, str(info.value), error_input.error_regex)
    # and beyond: the very class torch.nn raises, and its message first
    _assert_same_error(call(TWINS[nn_cls]), call(nn_cls))


# ---------------------------------------------------------------- 2. test/test_nn.py: errors and messages

MODES = ("RNN", "GRU", "LSTM")


def _rnn_args_cases(proj: bool):
    """test_rnn_args_check / test_rnn_proj_args_check: each shape made wrong once (bad size 7)."""
    input_size, hidden_size, proj_size, num_layers, batch, seq = 3, 5, 2, 2, 4, 6
    bad = 7
    modes = ("LSTM",) if proj else MODES
    for mode, directions in product(modes, (1, 2)):
        out = proj_size if proj else hidden_size
        x_shape = (seq, batch, input_size)
        h_shape = (num_layers * directions, batch, out)
        c_shape = (num_layers * directions, batch, hidden_size)

        def update(shape, dim, size):
            shape = list(shape)
            shape[dim] = size
            return tuple(shape)

        cases = [("input batch", update(x_shape, 1, bad), h_shape, c_shape),
                 ("hidden batch", x_shape, update(h_shape, 1, bad), c_shape),
                 ("input size", update(x_shape, 2, bad), h_shape, c_shape),
                 ("hidden size", x_shape, update(h_shape, 2, bad), c_shape),
                 ("hidden[0] layers", x_shape, update(h_shape, 0, bad), c_shape)]
        if mode == "LSTM":
            cases += [("cell batch", x_shape, h_shape, update(c_shape, 1, bad)),
                      ("cell size", x_shape, h_shape, update(c_shape, 2, bad)),
                      ("cell layers", x_shape, h_shape, update(c_shape, 0, bad))]
        for what, xs, hs, cs in cases:
            kwargs = dict(num_layers=num_layers, bidirectional=directions == 2)
            if proj:
                kwargs["proj_size"] = proj_size
            yield pytest.param(mode, kwargs, xs, hs, cs, id=f"{mode}-D{directions}-{what}".replace(" ", "_"))


def _call_layer(lib, mode, kwargs, x_shape, h_shape, c_shape, input_size=3, hidden_size=5):
    def run():
        torch.manual_seed(0)
        m = getattr(lib, mode)(input_size, hidden_size, **kwargs)
        x, h, c = torch.randn(x_shape), torch.randn(h_shape), torch.randn(c_shape)
        return m(x, (h, c) if mode == "LSTM" else h)
    return run


@pytest.mark.parametrize("mode, kwargs, x_shape, h_shape, c_shape",
                         list(_rnn_args_cases(False)) + list(_rnn_args_cases(True)))
def test_rnn_args_check(mode, kwargs, x_shape, h_shape, c_shape):
    actual, _ = _assert_same_error(_call_layer(fastrnn, mode, kwargs, x_shape, h_shape, c_shape),
                                   _call_layer(nn, mode, kwargs, x_shape, h_shape, c_shape))
    assert type(actual) is RuntimeError  # test_nn's assertRaises(RuntimeError, ...)


def _cell_no_broadcasting_cases():
    """test_RNN_cell_no_broadcasting: batch 1 states against batch 3 input, hidden 1, input size 1."""
    hidden_size, input_size = 20, 10
    cases = [("hx batch 1", (3, input_size), (1, hidden_size)),
             ("hx size 1", (3, input_size), (3, 1)),
             ("input size 1", (3, 1), (3, hidden_size))]
    for (what, x_shape, bad_shape), cls in product(cases, ("RNNCell", "GRUCell", "LSTMCell")):
        positions = ("h", "c") if cls == "LSTMCell" and what != "input size 1" else ("h",)
        for position in positions:
            yield pytest.param(cls, x_shape, bad_shape, position, id=f"{cls}-{what}-{position}".replace(" ", "_"))


@pytest.mark.parametrize("cls, x_shape, bad_shape, position", list(_cell_no_broadcasting_cases()))
def test_rnn_cell_no_broadcasting(cls, x_shape, bad_shape, position):
    def call(lib):
        def run():
            torch.manual_seed(0)
            cell = getattr(lib, cls)(10, 20)
            x, bad, good = torch.randn(x_shape), torch.randn(bad_shape), torch.randn(3, 20)
            if cls == "LSTMCell":
                hx = (bad, good) if position == "h" else (good, bad)
            else:
                hx = bad
            return cell(x, hx)
        return run
    actual, _ = _assert_same_error(call(fastrnn), call(nn))
    assert type(actual) is RuntimeError


def _on_meta(module, name):
    p = getattr(module, name)
    setattr(module, name, nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta")))


def _device_cases():
    """test_rnn_check_device, with the meta device standing in for a second device: the input and the
    parameters apart, the input and the states apart."""
    for mode in MODES:
        yield pytest.param(mode, "input", id=f"{mode}-input-on-meta")
        yield pytest.param(mode, "params", id=f"{mode}-params-on-meta")
        yield pytest.param(mode, "hx", id=f"{mode}-hx-on-meta")
        if mode == "LSTM":
            yield pytest.param(mode, "cx", id=f"{mode}-cx-on-meta")


@pytest.mark.parametrize("mode, where", list(_device_cases()))
def test_rnn_check_device(mode, where):
    def call(lib):
        def run():
            torch.manual_seed(0)
            m = getattr(lib, mode)(3, 5, 2)
            x, h = torch.randn(6, 4, 3), torch.randn(2, 4, 5)
            c = torch.randn(2, 4, 5)
            if where == "input":
                x = x.to("meta")
            elif where == "params":
                m.to("meta")
            elif where == "hx":
                h = h.to("meta")
            else:
                c = c.to("meta")
            if where in ("input", "params"):  # (as test_nn: the input and the weights apart, no states given)
                return m(x)
            return m(x, (h, c) if mode == "LSTM" else h)
        return run
    actual, expected = _assert_same_error(call(fastrnn), call(nn))
    kind = "hidden" if where in ("hx", "cx") else "parameter"
    assert re.search(f"Input and {kind} tensors are not at the same device", str(actual))


@pytest.mark.parametrize("mode", ("RNN", "GRU"))
def test_projections_errors_on_gru_and_rnn(mode):
    _assert_same_error(lambda: getattr(fastrnn, mode)(input_size=3, hidden_size=5, num_layers=2, proj_size=3),
                       lambda: getattr(nn, mode)(input_size=3, hidden_size=5, num_layers=2, proj_size=3))


def test_rnn_nonlinearity():
    for lib in (nn, fastrnn):
        assert lib.RNN(1, 10).nonlinearity == "tanh"
        assert lib.RNN(1, 10, nonlinearity="relu").nonlinearity == "relu"
    _assert_same_error(lambda: fastrnn.RNN(1, 10, nonlinearity="garbage"),
                       lambda: nn.RNN(1, 10, nonlinearity="garbage"))


@pytest.mark.parametrize("cls, kwargs", [("RNNCell", {"nonlinearity": "relu"}), ("RNNCell", {"nonlinearity": "tanh"}),
                                         ("GRUCell", {}), ("LSTMCell", {})])
@pytest.mark.parametrize("batched, with_hx", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_rnn_cell_forward_zero_hidden_size(cls, kwargs, batched, with_hx, dtype):
    """test_RNN_cell_forward_zero_hidden_size: cells with hidden_size=0 run, as torch.nn's, outputs and gradients
    (those of the input: zero) included."""
    x = torch.randn(3, 10, dtype=dtype) if batched else torch.randn(10, dtype=dtype)
    hx = torch.randn(*x.shape[:-1], 0, dtype=dtype).requires_grad_()
    x.requires_grad_()
    args = (x,) + (((hx, hx) if cls == "LSTMCell" else hx,) if with_hx else ())
    reference, twin = _build(getattr(nn, cls), (10, 0), kwargs, dtype, True)
    _assert_same_results(_run(twin, args, {}), _run(reference, args, {}), dtype, cls)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32))
def test_rnn_input_size_zero(mode, dtype):
    """test_RNN_input_size_zero: a batch of zero sequences ([5, 0, 3]) runs forward and backward."""
    reference, twin = _build(getattr(nn, mode), (3, 4), {}, dtype, True)
    x = torch.zeros(5, 0, 3, dtype=dtype, requires_grad=True)
    results = _run(twin, (x,), {})
    assert results["out[0]"].shape == (5, 0, 4)
    _assert_same_results(results, _run(reference, (x,), {}), dtype, mode)


@pytest.mark.parametrize("mode", MODES)
def test_autocast_disabled_dtype_mismatch(mode):
    """test_autocast's LSTM case: a bfloat16 model on float32 input raises ValueError without autocast, and runs
    under CPU autocast."""
    def call(lib, autocast):
        def run():
            torch.manual_seed(0)
            m = getattr(lib, mode)(1, 1, 2).to(torch.bfloat16)
            x, h = torch.randn(1, 2, 1), torch.randn(2, 2, 1)
            hx = (h, torch.randn(2, 2, 1)) if mode == "LSTM" else h
            if autocast:
                with torch.amp.autocast(device_type="cpu"):
                    return m(x, hx)
            return m(x, hx)
        return run
    actual, _ = _assert_same_error(call(fastrnn, False), call(nn, False))
    assert re.search(r"RNN input dtype .* does not match weight dtype", str(actual))
    # Under CPU autocast it runs. (torch.nn's LSTM needs a CPU with bfloat16 support in oneDNN for that, AVX-512:
    # elsewhere torch.nn raises "could not create a primitive descriptor", which fastrnn has no reason to copy.)
    assert _caught(call(fastrnn, True)) is None
    torch_error = _caught(call(nn, True))
    assert torch_error is None or "primitive descriptor" in str(torch_error), torch_error
    if torch_error is None:
        (out, _), (expected, _) = call(fastrnn, True)(), call(nn, True)()
        assert out.dtype == expected.dtype and out.shape == expected.shape
