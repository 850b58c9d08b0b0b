"""torch.onnx.export of models holding fastrnn layers, with both exporters, run in onnxruntime.

While an export records the model, fastrnn's layers record torch.nn's own op (fastrnn.functional.
implementation_for), so each export must be torch.nn's: the same ONNX operators (ONNX's LSTM/GRU/RNN
wherever torch.nn's export has them), the same dynamic axes, and onnxruntime's output equal to torch.nn's
eager output within 1e-5 in float32, at batch sizes (and, where torch.nn's export has a dynamic time axis,
lengths) other than those exported with.
"""

from __future__ import annotations

import collections
import io
import warnings

import pytest
import torch
from torch import nn

import fastrnn

onnx = pytest.importorskip("onnx")  # test dependencies ([test] extra); CI installs them
ort = pytest.importorskip("onnxruntime")

I, H = 3, 5


class Model(nn.Module):
    def __init__(self, rnn, with_hx):
        super().__init__()
        self.rnn = rnn
        self.with_hx = with_hx

    def forward(self, x, *hx):
        y, _ = self.rnn(x, (hx if len(hx) > 1 else hx[0]) if self.with_hx else None)
        return y


CONFIGS = [
    ("LSTM", {}, False),
    ("LSTM", {"num_layers": 2, "bidirectional": True}, True),
    ("LSTM", {"batch_first": True}, False),
    ("GRU", {}, True),
    ("GRU", {"num_layers": 2, "bidirectional": True, "batch_first": True}, False),
    ("RNN", {"nonlinearity": "tanh", "bidirectional": True}, False),
    ("RNN", {"nonlinearity": "relu", "num_layers": 2}, True),
]


def _id(config):
    name, kwargs, with_hx = config
    return "-".join([name, *(f"{k}={v}" for k, v in kwargs.items()), "hx" if with_hx else "no-hx"])


def models(name, kwargs, with_hx):
    torch.manual_seed(0)
    ref = Model(getattr(nn, name)(I, H, **kwargs), with_hx).eval()
    fast = Model(getattr(fastrnn, name)(I, H, **kwargs), with_hx).eval()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def inputs(module, T, B, seed=1):
    gen = torch.Generator().manual_seed(seed)
    rnn = module.rnn
    x = torch.randn((B, T, I) if rnn.batch_first else (T, B, I), generator=gen)
    if not module.with_hx:
        return (x,)
    D = 2 if rnn.bidirectional else 1
    hx = [torch.randn(rnn.num_layers * D, B, H, generator=gen)]
    if isinstance(rnn, (nn.LSTM, fastrnn.LSTM)):
        hx.append(torch.randn(rnn.num_layers * D, B, H, generator=gen))
    return (x, *hx)


def export(module, args, dynamo):
    names = ["x"] + [f"h{i}" for i in range(len(args) - 1)]
    batch_dim = 0 if module.rnn.batch_first else 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch")
            shapes = ({batch_dim: batch},) + ((tuple({1: batch} for _ in args[1:]),) if len(args) > 1 else ())
            program = torch.onnx.export(module, args, input_names=names, dynamic_shapes=shapes, dynamo=True)
            return program.model_proto
        buffer = io.BytesIO()
        axes = {"x": {batch_dim: "batch", 1 - batch_dim: "time"}}
        axes.update({n: {1: "batch"} for n in names[1:]})
        torch.onnx.export(module, args, buffer, input_names=names, output_names=["y"], dynamic_axes=axes,
                          dynamo=False)
        return onnx.load_from_string(buffer.getvalue())


def run_onnx(model, args):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)}
    return torch.from_numpy(session.run(None, feeds)[0])


def op_types(model):
    return sorted({n.op_type for n in model.graph.node})


# The nodes that do the recurrence's arithmetic. (The ops that build default states or reshape differ in
# small ways between torch.nn's forward and fastrnn's, e.g. ConstantOfShape against Expand for zeros.)
ARITHMETIC = {"LSTM", "GRU", "RNN", "MatMul", "Gemm", "Tanh", "Relu", "Sigmoid", "Loop", "Scan"}


def arithmetic_nodes(model):
    return collections.Counter(n.op_type for n in model.graph.node if n.op_type in ARITHMETIC)


def input_dims(model):
    return [[d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_onnx_export_runs_in_onnxruntime_like_torch_nn(config, dynamo):
    name, kwargs, with_hx = config
    ref, fast = models(*config)
    T = 4
    got = export(fast, inputs(fast, T, 2), dynamo)
    want = export(ref, inputs(ref, T, 2), dynamo)
    assert arithmetic_nodes(got) == arithmetic_nodes(want)  # torch.nn's graph, not an unrolled loop
    assert input_dims(got) == input_dims(want)  # the same dynamic axes
    if not (dynamo and name == "RNN"):  # torch.nn's dynamo export of RNN unrolls it; both do the same
        assert {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN"}[name] in op_types(got)
    time_is_dynamic = "time" in str(input_dims(got)) or not dynamo
    for B, T_run in ((2, T), (3, T), (1, 7 if time_is_dynamic else T)):
        args = inputs(fast, T_run, B, seed=B + T_run)
        with torch.no_grad():
            expected = ref(*args)
        torch.testing.assert_close(run_onnx(got, args), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_onnx_export_with_proj_size_behaves_as_torch_nn(dynamo):
    """torch.nn's TorchScript-based export refuses proj_size (an ONNX LSTM has no projection); its dynamo
    export handles it. fastrnn does the same in each case."""
    ref, fast = models("LSTM", {"proj_size": 2}, False)
    ref.rnn.proj_size = fast.rnn.proj_size  # (same module configuration)
    args = inputs(fast, 4, 2)
    if not dynamo:
        with pytest.raises(Exception) as torch_error:
            export(ref, args, dynamo)
        with pytest.raises(type(torch_error.value), match="LSTMs with projections"):
            export(fast, args, dynamo)
        return
    got, want = export(fast, args, dynamo), export(ref, args, dynamo)
    assert arithmetic_nodes(got) == arithmetic_nodes(want)
    run_args = inputs(fast, 4, 3, seed=9)
    try:
        expected = run_onnx(want, run_args)
    except Exception as torch_error:  # torch 2.14: onnxruntime rejects it (initial_c shaped as the projection)
        with pytest.raises(type(torch_error)):
            run_onnx(got, run_args)
        return
    torch.testing.assert_close(run_onnx(got, run_args), expected, rtol=1e-5, atol=1e-5)


def test_eager_calls_after_an_export_run_the_kernels():
    _, fast = models("GRU", {}, False)
    export(fast, inputs(fast, 4, 2), dynamo=False)
    assert not torch.onnx.is_in_onnx_export()
    with torch.no_grad():
        y = fast(*inputs(fast, 4, 2))
    assert fastrnn.functional.implementation_for(torch.device("cpu"), "GRU") is fastrnn.functional.rnn
    assert y.shape == (4, 2, H)
