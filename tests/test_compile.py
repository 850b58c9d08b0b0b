"""torch.compile over models using fastrnn: one graph (fullgraph=True), same outputs and gradients as eager.

The fast tests use the aot_eager backend: Dynamo traces the whole model into one graph, and AOTAutograd runs
fastrnn's fake kernels and autograd registrations, without generating code. One test (marked slow:
inductor's C++ code generation takes over a minute on a cold cache with 2 cores) compiles with the default
inductor backend.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastrnn


# Tolerances per dtype for the same computation done two ways. float64: summation order costs ~1e-14
# relative here, far below rtol 1e-9 (and far below float32's eps, so a float computation would fail).
# Other dtypes: torch.testing's defaults for the dtype (float32: rtol 1.3e-6, atol 1e-5).
_TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-11)}


def assert_close(got, want, **kwargs):
    torch.testing.assert_close(got, want, **_TOLERANCES.get(want.dtype, {}), **kwargs)

OPS = {fastrnn.LSTM: "lstm_layer", fastrnn.GRU: "gru_layer"}


class Model(nn.Module):
    """Linear -> recurrent layer (batch_first) -> Linear."""

    def __init__(self, rnn: nn.Module, in_features: int = 3):
        super().__init__()
        self.front = nn.Linear(in_features, rnn.input_size)
        self.rnn = rnn
        D = 2 if rnn.bidirectional else 1
        P = rnn.proj_size if rnn.proj_size > 0 else rnn.hidden_size
        self.back = nn.Linear(D * P, 2)

    def forward(self, x, hx=None):
        y, h = self.rnn(torch.tanh(self.front(x)), hx)
        return self.back(y), h


class Recorder:
    """A Dynamo backend that keeps every graph it is given, then hands it to `inner` (a backend name)."""

    def __init__(self, inner: str):
        self.inner = torch._dynamo.lookup_backend(inner)
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return self.inner(gm, example_inputs)

    def op_names(self):
        return {str(n.target) for g in self.graphs for n in g.graph.nodes if n.op == "call_function"}


def flat(x):
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in flat(item)]
    return [x]


def run_and_grad(model, x, hx=None):
    """Outputs, and the gradients of a fixed function of them w.r.t. the input and every parameter."""
    x = x.detach().clone().requires_grad_()
    outs = flat(model(x, hx))
    loss = sum(((o * (i + 1)) ** 2).sum() for i, o in enumerate(outs))
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, [x] + params)
    return [o.detach() for o in outs], grads


def assert_matches_eager(compiled, eager, x, hx=None):
    got_out, got_grads = run_and_grad(compiled, x, hx)
    want_out, want_grads = run_and_grad(eager, x, hx)
    assert len(got_out) == len(want_out)
    for g, w in zip(got_out, want_out):
        assert_close(g, w)
    for g, w in zip(got_grads, want_grads):
        assert_close(g, w)


def padded_batch(B, T, lengths, features=3, seed=0):
    """[B, T, F] with zeros past each length (a padded batch as a data loader gives it)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, features, generator=g, dtype=torch.float64)
    mask = torch.arange(T).view(1, T, 1) < torch.tensor(lengths).view(B, 1, 1)
    return x * mask


def new_model(rnn_cls, **kwargs):
    torch.manual_seed(0)
    return Model(rnn_cls(8, 6, batch_first=True, **kwargs)).double()


LAYERS = [
    pytest.param(fastrnn.LSTM, dict(num_layers=2, bidirectional=True), id="lstm-L2-bi"),
    pytest.param(fastrnn.LSTM, dict(num_layers=2, proj_size=4), id="lstm-L2-proj"),
    pytest.param(fastrnn.GRU, dict(num_layers=2, bidirectional=True), id="gru-L2-bi"),
    pytest.param(fastrnn.RNN, dict(num_layers=2, nonlinearity="tanh"), id="rnn_tanh-L2"),
    pytest.param(fastrnn.RNN, dict(num_layers=1, nonlinearity="relu", bidirectional=True), id="rnn_relu-L1-bi"),
]


@pytest.mark.parametrize("rnn_cls, kwargs", LAYERS)
def test_fullgraph_one_graph_matches_eager_and_second_length(rnn_cls, kwargs):
    torch._dynamo.reset()
    model = new_model(rnn_cls, **kwargs)
    recorder = Recorder("aot_eager")
    compiled = torch.compile(model, fullgraph=True, backend=recorder)

    assert_matches_eager(compiled, model, padded_batch(3, 5, [5, 5, 5]))
    assert len(recorder.graphs) == 1  # the whole model in one graph
    # The recurrence is traced as fastrnn's ops (not the pure-PyTorch reference's per-step loop).
    mode = model.rnn.mode.lower()
    assert any(name.startswith(f"fastrnn.{mode}_layer") for name in recorder.op_names()), recorder.op_names()
    assert not any(f"method {vf} " in name for name in recorder.op_names()  # torch._VF's (torch.nn's) kernels
                   for vf in ("lstm", "gru", "rnn_tanh", "rnn_relu"))

    # A second sequence length (padded input), and a third: recompiled or dynamic, never broken.
    assert_matches_eager(compiled, model, padded_batch(3, 9, [9, 4, 2], seed=1))
    assert_matches_eager(compiled, model, padded_batch(2, 2, [2, 1], seed=2))
    assert 1 <= len(recorder.graphs) <= 3


def test_fullgraph_with_initial_state_and_torch_nn_parity():
    """hx passed in; the compiled twin also matches torch.nn itself (same parameters)."""
    torch._dynamo.reset()
    model = new_model(fastrnn.LSTM, num_layers=2, bidirectional=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(3)
    hx = (torch.randn(4, 3, 6, generator=g, dtype=torch.float64),
          torch.randn(4, 3, 6, generator=g, dtype=torch.float64))
    x = padded_batch(3, 4, [4, 4, 4])
    assert_matches_eager(compiled, model, x, hx)

    torch_model = Model(nn.LSTM(8, 6, num_layers=2, bidirectional=True, batch_first=True)).double()
    torch_model.load_state_dict(model.state_dict())
    assert_matches_eager(compiled, torch_model, x, hx)


@pytest.mark.parametrize("rnn_cls, kwargs", [LAYERS[0], LAYERS[2], LAYERS[3]])
def test_packed_input_under_compile_without_fullgraph(rnn_cls, kwargs):
    torch._dynamo.reset()
    torch.manual_seed(0)
    rnn = rnn_cls(3, 5, **kwargs).double()

    def f(x, lengths):
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, h = rnn(packed)
        y, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
        return y, h

    compiled = torch.compile(f, backend="aot_eager")
    x = padded_batch(4, 6, [3, 6, 1, 4], seed=4).requires_grad_()
    lengths = torch.tensor([3, 6, 1, 4])
    got, want = compiled(x, lengths), f(x, lengths)
    for a, b in zip(flat(got), flat(want)):
        assert_close(a, b)
    loss = lambda r: sum((t ** 2).sum() for t in flat(r))  # noqa: E731
    for a, b in zip(torch.autograd.grad(loss(got), [x] + list(rnn.parameters())),
                    torch.autograd.grad(loss(want), [x] + list(rnn.parameters()))):
        assert_close(a, b)


@pytest.mark.slow
def test_inductor_fullgraph_lstm_model_matches_eager():
    """The default backend (inductor, C++ code generation): Linear -> LSTM (2 layers, bidirectional) -> Linear."""
    torch._dynamo.reset()
    model = new_model(fastrnn.LSTM, num_layers=2, bidirectional=True)
    compiled = torch.compile(model, fullgraph=True, dynamic=True)
    assert_matches_eager(compiled, model, padded_batch(3, 5, [5, 5, 5]))
    assert_matches_eager(compiled, model, padded_batch(3, 9, [9, 4, 2], seed=1))
