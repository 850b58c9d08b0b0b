"""Small calls (issue 15): T = 1 calls feeding their state back, cells stepped in a loop, the _no_grad ops, weights
prepared per call (never kept from one call to the next: an updated weight is always the weight used), and
packed batches multiplied by their real rows only.

Every result is checked against torch.nn with the same weights and inputs, in float64 (exact up to summation
order) and float32, outputs and every gradient.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from conftest import CELL_KINDS, assert_results_close, make_cell_pair, make_pair, tol

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")


def _states(hidden):
    return hidden if isinstance(hidden, tuple) else (hidden,)


def _stream(model, xs, kind: str, train: bool, updates=None) -> dict:
    """Steps model over xs ([N, B, I]): a layer called with T = 1 (kind "layer") or a cell, the state fed back;
    `updates(step)` runs between steps (a weight update). Returns the outputs, the final state and, training,
    the gradients of every parameter and of xs."""
    hidden, outputs = None, []
    xs = xs.detach().requires_grad_(train)
    with torch.set_grad_enabled(train):
        for t in range(xs.size(0)):
            if kind == "layer":
                y, hidden = model(xs[t:t + 1], hidden)
                y = y[0]
            else:
                hidden = model(xs[t], hidden)
                y = _states(hidden)[0]
            outputs.append(y)
            if updates is not None:
                updates(t)
    results = {f"output {t}": y for t, y in enumerate(outputs)}
    results.update({f"state {i}": s for i, s in enumerate(_states(hidden))})
    if train:
        loss = sum((y * (t + 1)).sum() for t, y in enumerate(outputs)) + sum(s.sum() for s in _states(hidden))
        loss.backward()
        results.update({f"grad {n}": p.grad for n, p in model.named_parameters()})
        results["grad x"] = xs.grad
    return {k: v.detach() for k, v in results.items()}


def _pair(kind: str, cell: str, size: int, hidden: int, dtype):
    if kind == "layer":
        return make_pair(CELL_KINDS[cell], size, hidden, dtype=dtype)
    return make_cell_pair(CELL_KINDS[cell], size, hidden, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("B,H", [(1, 1), (1, 5), (3, 17), (8, 40)])
@pytest.mark.parametrize("kind", ["layer", "cell"])
@pytest.mark.parametrize("cell", CELLS)
def test_streaming_matches_torch_nn(cell, kind, B, H, train, dtype):
    ref, twin = _pair(kind, cell, 4, H, dtype)
    xs = torch.randn(6, B, 4, dtype=dtype, generator=torch.Generator().manual_seed(5))
    assert_results_close(_stream(twin, xs, kind, train), _stream(ref, xs, kind, train), dtype=dtype,
                         what=f"{cell} {kind}")


@pytest.mark.parametrize("T", [1, 2, 15, 16, 17, 40])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("cell", CELLS)
def test_both_sides_of_the_packing_threshold(cell, dtype, T):
    """A call whose products have fewer than PackedWeight::kMinRowsToPack (16) rows multiplies the weights where
    they are, a longer one packs them first: both agree with torch.nn, forward and backward, with B = 1
    (T rows) and with two directions."""
    for bidirectional in (False, True):
        ref, twin = make_pair(CELL_KINDS[cell], 3, 9, bidirectional=bidirectional, dtype=dtype)
        x = torch.randn(T, 1, 3, dtype=dtype, generator=torch.Generator().manual_seed(T))
        results = []
        for model in (twin, ref):
            xx = x.clone().requires_grad_()
            y, hidden = model(xx)
            (y.sum() + sum(s.sum() for s in _states(hidden))).backward()
            results.append({"y": y.detach(), **{f"state {i}": s.detach() for i, s in enumerate(_states(hidden))},
                            "grad x": xx.grad, **{n: p.grad for n, p in model.named_parameters()}})
        assert_results_close(*results, dtype=dtype, what=f"{cell} T={T} bidirectional={bidirectional}")


# --------------------------------------------------------------------- weights updated between calls
# Nothing derived from a weight is kept from one call to the next (the weight is read, and packed where that pays,
# in every call), so every update below must show in the next call. These tests hold any future cache of prepared
# weights to that: an in-place optimizer step, an in-place edit under no_grad, an edit through .data (which
# autograd's version counter does not see) and load_state_dict.

def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1)


def _adam_foreach(model):
    return torch.optim.Adam(model.parameters(), lr=0.05, foreach=True)


def _adam_fused(model):
    return torch.optim.Adam(model.parameters(), lr=0.05, fused=True)


def _edit_no_grad(model, t):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.0 + 0.1 * (t + 1))


def _edit_data(model, t):
    for p in model.parameters():
        p.data.add_(0.01 * (t + 1))


def _load_state_dict(source):
    def update(model, t):
        model.load_state_dict({k: v * (1.0 - 0.05 * (t + 1)) for k, v in source.items()})
    return update


@pytest.mark.parametrize("how", ["sgd", "adam_foreach", "adam_fused", "no_grad_edit", "data_edit", "load_state_dict"])
@pytest.mark.parametrize("kind", ["layer", "cell"])
@pytest.mark.parametrize("cell", CELLS)
def test_weight_updates_between_calls_are_seen(cell, kind, how):
    results = {}
    ref, twin = _pair(kind, cell, 3, 6, torch.float64)
    source = {k: v.clone() for k, v in ref.state_dict().items()}
    xs = torch.randn(4, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    for name, model in (("fastrnn", twin), ("torch.nn", ref)):
        outputs, hidden = [], None
        optimizer = {"sgd": _sgd, "adam_foreach": _adam_foreach, "adam_fused": _adam_fused}.get(how)
        opt = optimizer(model) if optimizer else None
        for t in range(xs.size(0)):
            if kind == "layer":
                y, hidden = model(xs[t:t + 1], hidden)
            else:
                hidden = model(xs[t], hidden)
                y = _states(hidden)[0]
            if opt is not None:  # one optimizer step per call, the state carried over detached
                opt.zero_grad()
                (y.square().sum() + sum(s.sum() for s in _states(hidden))).backward()
                opt.step()
                hidden = tuple(s.detach() for s in _states(hidden)) if isinstance(hidden, tuple) else hidden.detach()
            elif how == "no_grad_edit":
                _edit_no_grad(model, t)
            elif how == "data_edit":
                _edit_data(model, t)
            else:
                _load_state_dict(source)(model, t)
            outputs.append(y.detach())
        results[name] = {f"output {t}": y for t, y in enumerate(outputs)}
    assert_results_close(results["fastrnn"], results["torch.nn"], dtype=torch.float64, what=f"{cell} {kind} {how}")
    # (and the updates did change the outputs: a test that would pass with stale weights proves nothing)
    frozen, _ = _pair(kind, cell, 3, 6, torch.float64)
    first = frozen(xs[0:1])[0][0] if kind == "layer" else _states(frozen(xs[0]))[0]
    assert torch.allclose(first, results["torch.nn"]["output 0"])
    with torch.no_grad():
        hidden = None
        for t in range(2):
            if kind == "layer":
                y, hidden = frozen(xs[t:t + 1], hidden)
            else:
                hidden = frozen(xs[t], hidden)
                y = _states(hidden)[0]
    assert not torch.allclose(y, results["torch.nn"]["output 1"])


# --------------------------------------------------------------------- the _no_grad ops

def _forward_args(cell, requires_grad):
    from test_ops import make_args

    return make_args(cell, 1, requires_grad=requires_grad)


@pytest.mark.parametrize("cell", CELLS)
def test_no_grad_op_is_the_layer_op(cell):
    """*_layer_no_grad computes what *_layer computes (the same kernels), bitwise."""
    args = _forward_args(cell, requires_grad=False)
    layer = getattr(torch.ops.fastrnn, f"{cell}_layer")(*args.values(), False)
    no_grad = getattr(torch.ops.fastrnn, f"{cell}_layer_no_grad")(*args.values(), False)
    for a, b in zip(layer, no_grad):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cell", CELLS)
def test_no_grad_op_refuses_gradients(cell):
    """Called where a gradient is needed, the _no_grad op raises (it would compute none), naming the op to use;
    under torch.no_grad the same arguments run."""
    args = _forward_args(cell, requires_grad=True)
    op = getattr(torch.ops.fastrnn, f"{cell}_layer_no_grad")
    with pytest.raises(RuntimeError, match=rf"fastrnn::{cell}_layer_no_grad computes no gradient, but an argument "
                                           r"requires one; call the op without the _no_grad suffix"):
        op(*args.values(), False)
    with torch.no_grad():
        y = op(*args.values(), False)[0]
    assert not y.requires_grad


@pytest.mark.parametrize("cell", CELLS)
def test_opcheck_no_grad_op(cell):
    args = _forward_args(cell, requires_grad=False)
    torch.library.opcheck(getattr(torch.ops.fastrnn, f"{cell}_layer_no_grad"), (*args.values(), False))


@pytest.mark.parametrize("cell", CELLS)
def test_modules_call_the_op_gradients_need(cell):
    """Inference calls the _no_grad op, a call that needs gradients the layer op (whose backward then runs)."""
    ref, twin = make_pair(CELL_KINDS[cell], 3, 4)
    x = torch.randn(2, 1, 3, dtype=torch.float64)
    name = f"fastrnn::{cell}_layer"
    for grad, expected in ((False, f"{name}_no_grad"), (True, name)):
        with torch.profiler.profile() as prof, torch.set_grad_enabled(grad):
            twin(x)
        called = {e.name for e in prof.events()}
        assert expected in called, called
        assert ({name, f"{name}_no_grad"} - {expected}).isdisjoint(called), called



def _leaves(fn):
    """The tensors whose gradients autograd accumulates behind grad_fn, one level down."""
    return {id(f.variable) for f, _ in fn.next_functions if f is not None and hasattr(f, "variable")}


@pytest.mark.parametrize("needs", ["all", "weights only", "input only"])
@pytest.mark.parametrize("hx", [False, True], ids=["no_hx", "hx"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("kind,T", [("cell", 1), ("layer", 1), ("layer", 4)])
@pytest.mark.parametrize("cell", CELLS)
def test_a_one_direction_training_call_is_one_autograd_node(cell, kind, T, bias, hx, needs):
    """The plain training call of a cell, or of a one-layer, one-direction layer, records one node
    (csrc/include/fastrnn/autograd.h OneDirectionFunction) straight onto the leaves, not a view node per argument
    and output around the layer op; its outputs and gradients, first and second order, are torch.nn's, for every
    subset of inputs that needs one."""
    ref, twin = (make_cell_pair if kind == "cell" else make_pair)(CELL_KINDS[cell], 3, 5, bias=bias)
    torch.manual_seed(1)
    lead = () if kind == "cell" else (1,)
    x = torch.randn(*(() if kind == "cell" else (T,)), 2, 3, dtype=torch.float64)
    states = [torch.randn(*lead, 2, 5, dtype=torch.float64) for _ in range(2 if cell == "lstm" else 1)]
    results = []
    for model in (ref, twin):
        model.requires_grad_(needs != "input only")
        xs = x.clone().requires_grad_(needs != "weights only")
        hs = [s.clone().requires_grad_(needs != "weights only") for s in states]
        args = (xs, tuple(hs) if cell == "lstm" else hs[0]) if hx else (xs,)
        out = model(*args)
        out = list(_states(out)) if kind == "cell" else [out[0], *_states(out[1])]
        if model is twin:
            assert len({o.grad_fn for o in out}) == 1 and type(out[0].grad_fn).__name__ == "CppFunction", out[0].grad_fn
            leaves = [t for t in (xs, *(hs if hx else []), *model.parameters()) if t.requires_grad]
            assert _leaves(out[0].grad_fn) == {id(t) for t in leaves}
        inputs = [t for t in (xs, *(hs if hx else []), *model.parameters()) if t.requires_grad]
        loss = sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() for o in out)
        grads = torch.autograd.grad(loss, inputs, create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in grads), inputs, allow_unused=True)
        results.append([*out, *grads, *[g for g in second if g is not None]])
    assert len(results[0]) == len(results[1])
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)

# --------------------------------------------------------------------- packed batches: only their real rows

def _packed_results(model, padded, lengths, enforce_sorted, train):
    x = padded.clone().requires_grad_(train)
    with torch.set_grad_enabled(train):
        output, hidden = model(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted))
    results = {"output": output.data, **{f"state {i}": s for i, s in enumerate(_states(hidden))}}
    if train:
        (output.data.square().sum() + sum(s.sum() for s in _states(hidden))).backward()
        results.update({f"grad {n}": p.grad for n, p in model.named_parameters()})
        results["grad x"] = x.grad
    return {k: v.detach() for k, v in results.items()}


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("lengths", [(9, 1, 4, 2, 7, 1), (9, 9, 9, 9, 9, 8), (1, 1, 1, 1, 1, 9)],
                         ids=["about_half_real", "nearly_all_real", "one_long"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("cell", CELLS)
def test_packed_real_rows_match_torch_nn(cell, bidirectional, lengths, train):
    """Batches with few real rows (multiplied row by row: PaddedRows in csrc/cpu/recurrence.h) and with nearly all
    real (one product over all rows), unsorted, two layers (the second's input is the first's padded output)."""
    ref, twin = make_pair(CELL_KINDS[cell], 3, 5, num_layers=2, bidirectional=bidirectional)
    padded = torch.randn(9, len(lengths), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor(lengths)
    assert_results_close(_packed_results(twin, padded, lengths, False, train),
                         _packed_results(ref, padded, lengths, False, train), what=f"{cell} packed")


@pytest.mark.parametrize("cell", CELLS)
def test_op_lengths_unsorted_with_padding_rows_inside(cell):
    """Called directly, the op takes lengths in any order, so a row among a step's first active_rows[t] may be
    finished: with few real rows (the row-by-row products) the results still equal the reference's, padded
    outputs zero, and the gradients too."""
    from test_ops import make_args

    lengths = (1, 6, 0, 2, 1, 1, 1, 1)
    args = make_args(cell, 2, lengths=lengths, T=6, B=len(lengths))
    op = getattr(torch.ops.fastrnn, f"{cell}_layer")
    y = op(*args.values(), True)[0]
    from fastrnn import reference

    inputs = [v for v in args.values()]
    if cell != "lstm":
        inputs = inputs[:4] + [None] + inputs[4:6] + [None] + inputs[6:]
    expected = reference.layer(cell, *inputs)[0]
    torch.testing.assert_close(y, expected, **tol(torch.float64))
    grads = torch.autograd.grad(y.square().sum(), [args["x"], args["w_ih"], args["w_hh"]])
    expected_grads = torch.autograd.grad(expected.square().sum(), [args["x"], args["w_ih"], args["w_hh"]])
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, **tol(torch.float64))


# --------------------------------------------------------------------- bidirectional layers, by thread count

@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_at_every_thread_count(cell, packed, threads):
    """On 2 threads the two directions run at once, one per thread (directions_concurrently in
    csrc/cpu/recurrence.h), each writing its own outputs and x's gradient added after both; on 1, and on 3 with
    steps large enough to split, one after the other. Every way gives torch.nn's results, gradients included."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for hidden, batch in ((5, 3), (64, 16)):  # (a small step and one of 2^20 multiply-adds or more)
            ref, twin = make_pair(CELL_KINDS[cell], 4, hidden, num_layers=2, bidirectional=True)
            padded = torch.randn(7, batch, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(hidden))
            lengths = torch.randint(1, 8, (batch,), generator=torch.Generator().manual_seed(1))
            if packed:
                results = [_packed_results(m, padded, lengths, False, True) for m in (twin, ref)]
            else:
                results = []
                for model in (twin, ref):
                    x = padded.clone().requires_grad_()
                    y, hidden_state = model(x)
                    (y.square().sum() + sum(s.sum() for s in _states(hidden_state))).backward()
                    results.append({"y": y.detach(), "grad x": x.grad,
                                    **{n: p.grad for n, p in model.named_parameters()}})
            assert_results_close(*results, what=f"{cell} threads={threads} H={hidden}")
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- the cells' plain call in C++

def _count_plain_cell_calls(monkeypatch):
    """Wraps functional.plain_cell (csrc/fastrnn.cpp) to record whether each call served the step (a result) or
    handed it back to the Python checks (None)."""
    from fastrnn import functional

    served = []
    real = functional.plain_cell

    def counting(*args):
        out = real(*args)
        served.append(out is not None)
        return out

    monkeypatch.setattr(functional, "plain_cell", counting)
    return served


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("cell", CELLS)
def test_plain_cell_call_serves_the_common_call(cell, bias, train, monkeypatch):
    served = _count_plain_cell_calls(monkeypatch)
    ref, twin = make_cell_pair(CELL_KINDS[cell], 6, 5, bias=bias)
    xs = torch.randn(4, 3, 6, dtype=torch.float64)
    assert_results_close(_stream(twin, xs, "cell", train), _stream(ref, xs, "cell", train), dtype=torch.float64)
    assert served == [True] * 4  # the first step without a state (zeros), the others with the one fed back


class _Traced(torch.Tensor):
    """A tensor subclass with __torch_function__: torch.ops calls it, so the plain call must not."""

    seen = 0

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.seen += 1
        return super().__torch_function__(func, types, args, kwargs or {})


def _unusual_calls(cell):
    """(name, make(twin) -> (input, hx)) of calls the plain call must hand back, and what torch.nn makes of them
    (the same call on torch.nn's twin). A state's shape per cell: (h, c) for LSTM."""
    def state(B=3, H=5, dtype=torch.float64):
        h = torch.randn(B, H, dtype=dtype)
        return (h, torch.randn(B, H, dtype=dtype)) if cell == "lstm" else h

    x = torch.randn(3, 6, dtype=torch.float64)
    calls = {
        "unbatched": (torch.randn(6, dtype=torch.float64), None),
        "float32 input": (x.float(), None),
        "state of another batch": (x, state(B=2)),
        "state of another dtype": (x, state(dtype=torch.float32)),
        "input too wide": (torch.randn(3, 7, dtype=torch.float64), None),
        "not a tensor": ([[1.0] * 6] * 3, None),
    }
    if cell == "lstm":
        h, c = state()
        calls["state as a list"] = (x, [h, c])
    return calls


@pytest.mark.parametrize("cell", CELLS)
def test_plain_cell_call_hands_back_every_other_call(cell, monkeypatch):
    """Each call the plain call does not serve gets torch.nn's result or torch.nn's exception, from the Python path."""
    served = _count_plain_cell_calls(monkeypatch)
    ref, twin = make_cell_pair(CELL_KINDS[cell], 6, 5)
    for name, (x, hx) in _unusual_calls(cell).items():
        served.clear()
        try:
            want = ref(x, hx)
        except Exception as e:  # noqa: BLE001  (whatever torch.nn raises, fastrnn must raise too)
            with pytest.raises(type(e)):
                twin(x, hx)
        else:
            got = twin(x, hx)
            for g, w in zip(_states(got), _states(want)):
                torch.testing.assert_close(g, w, **tol(w.dtype), msg=name)
        assert served in ([False], []), (name, served)  # handed back (or not asked: hx not a pair)


@pytest.mark.parametrize("cell", CELLS)
def test_plain_cell_call_leaves_torch_function_to_torch(cell, monkeypatch):
    served = _count_plain_cell_calls(monkeypatch)
    ref, twin = make_cell_pair(CELL_KINDS[cell], 6, 5)
    x = torch.randn(3, 6, dtype=torch.float64)
    _Traced.seen = 0
    got = twin(x.as_subclass(_Traced))
    assert served == [False] and _Traced.seen > 0
    torch.testing.assert_close(_states(got)[0].as_subclass(torch.Tensor), _states(ref(x))[0])

    class Mode(torch.overrides.TorchFunctionMode):
        calls = 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            Mode.calls += 1
            return func(*args, **(kwargs or {}))

    served.clear()
    with Mode():
        got = twin(x)
    assert served == [False] and Mode.calls > 0
    torch.testing.assert_close(_states(got)[0], _states(ref(x))[0])


@pytest.mark.parametrize("cell", CELLS)
def test_plain_cell_call_reads_the_module_as_it_is_now(cell, monkeypatch):
    """Weights replaced, parametrized or changed in dtype after construction: never a stale or wrong weight."""
    served = _count_plain_cell_calls(monkeypatch)
    ref, twin = make_cell_pair(CELL_KINDS[cell], 6, 5)
    x = torch.randn(3, 6, dtype=torch.float64)
    with torch.no_grad():
        w = torch.randn_like(twin.weight_hh)
        twin.weight_hh = torch.nn.Parameter(w.clone())
        ref.weight_hh = torch.nn.Parameter(w.clone())
    torch.testing.assert_close(_states(twin(x))[0], _states(ref(x))[0])
    assert served == [True]
    # a parametrization moves the weight out of _parameters: handed back, and its value is what runs
    torch.nn.utils.parametrize.register_parametrization(twin, "weight_ih", _Doubled())
    torch.nn.utils.parametrize.register_parametrization(ref, "weight_ih", _Doubled())
    served.clear()
    torch.testing.assert_close(_states(twin(x))[0], _states(ref(x))[0])
    assert served == [False]
    # the bias flag as the module says it: a bias=True module whose biases are not in _parameters (plain attributes
    # here) is handed back, never served as bias-free
    ref, twin = make_cell_pair(CELL_KINDS[cell], 6, 5)
    for name in ("bias_ih", "bias_hh"):
        value = getattr(twin, name).detach().clone()
        del twin._parameters[name]
        setattr(twin, name, value)
    served.clear()
    torch.testing.assert_close(_states(twin(x))[0], _states(ref(x))[0])
    assert served == [False]


class _Doubled(torch.nn.Module):
    def forward(self, w):
        return 2 * w
