"""torch.ao.quantization.quantize_dynamic on a model after fastrnn.convert gives what it gives on the torch.nn
model: the same quantized modules (torch.ao.nn.quantized.dynamic's, exactly the classes torch.nn's get) and
bitwise the same outputs, for every spec form, qint8 and float16, with and without a user mapping. What torch.nn
leaves in float (nn.RNN, which no dynamic mapping covers) stays fastrnn in float. See fastrnn/_quantization.py."""

from __future__ import annotations

import copy
import importlib
import inspect

import pytest
import torch
import torch.ao.nn.quantized.dynamic as nnqd
import torch.ao.quantization as tq
from torch import nn

import fastrnn
from fastrnn import _quantization

pytestmark = [
    pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions.*are deprecated:UserWarning"),
]

QUANTIZE = importlib.import_module("torch.ao.quantization.quantize")  # the module, not tq.quantize (a function)

TWINS = {nn.LSTM: fastrnn.LSTM, nn.GRU: fastrnn.GRU, nn.RNN: fastrnn.RNN, nn.LSTMCell: fastrnn.LSTMCell,
         nn.GRUCell: fastrnn.GRUCell, nn.RNNCell: fastrnn.RNNCell}
VOCAB, E, H, OUT = 17, 6, 7, 3


class SeqModel(nn.Module):
    """Embedding -> a recurrent layer -> Linear."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, E)
        self.rnn = rnn
        D = 2 if rnn.bidirectional else 1
        self.fc = nn.Linear(D * (rnn.proj_size or rnn.hidden_size), OUT)

    def forward(self, tokens):  # tokens [B, T] if batch_first else [T, B]
        y, _ = self.rnn(self.emb(tokens))
        return self.fc(y)


class CellModel(nn.Module):
    """Embedding -> a cell stepped over time -> Linear on every step's h."""

    def __init__(self, cell: nn.Module):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, E)
        self.cell = cell
        self.fc = nn.Linear(cell.hidden_size, OUT)

    def forward(self, tokens):  # tokens [T, B]
        state, outs = None, []
        for x in self.emb(tokens):
            state = self.cell(x, state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        return self.fc(torch.stack(outs))


MODELS = {
    "lstm": lambda: SeqModel(nn.LSTM(E, H)),
    "lstm-2layer-bidir-batchfirst": lambda: SeqModel(nn.LSTM(E, H, num_layers=2, bidirectional=True,
                                                             batch_first=True)),
    "lstm-bidir": lambda: SeqModel(nn.LSTM(E, H, bidirectional=True)),
    "gru": lambda: SeqModel(nn.GRU(E, H)),
    "gru-2layer-bidir-batchfirst": lambda: SeqModel(nn.GRU(E, H, num_layers=2, bidirectional=True, batch_first=True)),
    "lstmcell": lambda: CellModel(nn.LSTMCell(E, H)),
    "grucell": lambda: CellModel(nn.GRUCell(E, H)),
    "rnncell-tanh": lambda: CellModel(nn.RNNCell(E, H)),
    "rnncell-relu": lambda: CellModel(nn.RNNCell(E, H, nonlinearity="relu")),
}
DTYPES = {torch.qint8: tq.default_dynamic_qconfig, torch.float16: tq.float16_dynamic_qconfig}


def make_pair(name: str, seed: int = 0):
    """(torch.nn model, its fastrnn.convert'ed copy): the same state_dict, both in eval mode."""
    torch.manual_seed(seed)
    model = MODELS[name]().eval()
    fast = fastrnn.convert(copy.deepcopy(model))
    recurrent = [m for m in fast.modules() if type(m) in TWINS.values()]
    assert len(recurrent) == 1, "fastrnn.convert did not convert the model's recurrent module"
    return model, fast


def recurrent_class(model: nn.Module) -> type:
    return type(model.rnn if hasattr(model, "rnn") else model.cell)


def tokens(seed: int = 1):
    return torch.randint(0, VOCAB, (5, 3), generator=torch.Generator().manual_seed(seed))


def assert_same_quantized(q_nn: nn.Module, q_fast: nn.Module):
    """Every submodule the same class (a recurrent module torch.nn left in float: its fastrnn twin), and the same
    output: bitwise when both models run the same (quantized) code, to float32's tolerance when a float recurrent
    module remains (fastrnn's kernels against torch.nn's)."""
    types_nn = [(n, TWINS.get(type(m), type(m))) for n, m in q_nn.named_modules()]
    types_fast = [(n, type(m)) for n, m in q_fast.named_modules()]
    assert types_fast == types_nn
    exact = not any(t in TWINS.values() for _, t in types_fast)
    x = tokens()
    torch.testing.assert_close(q_fast(x), q_nn(x), **(dict(rtol=0, atol=0) if exact else {}))


def spec_forms(nn_cls: type, dtype):
    """(qconfig_spec for the torch.nn model, the same spec as a user may write it for the fastrnn model)."""
    qconfig = DTYPES[dtype]
    twin = TWINS[nn_cls]
    is_cell = nn_cls in (nn.LSTMCell, nn.GRUCell, nn.RNNCell)
    name = "cell" if is_cell else "rnn"
    return {
        "set-torch.nn": ({nn_cls}, {nn_cls}),
        "set-fastrnn": ({nn_cls}, {twin}),
        "set-both": ({nn_cls}, {nn_cls, twin}),
        "set-torch.nn+Linear": ({nn_cls, nn.Linear}, {nn_cls, nn.Linear}),
        "dict-torch.nn": ({nn_cls: qconfig}, {nn_cls: qconfig}),
        "dict-fastrnn": ({nn_cls: qconfig}, {twin: qconfig}),
        "default": (None, None),
        "by-name": ({name}, {name}),
    }


SPEC_NAMES = list(spec_forms(nn.LSTM, torch.qint8))


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("spec", SPEC_NAMES)
@pytest.mark.parametrize("name", list(MODELS))
def test_quantize_dynamic_matches_torch_nn(name, spec, dtype):
    model, fast = make_pair(name)
    nn_cls = recurrent_class(model)
    spec_nn, spec_fast = spec_forms(nn_cls, dtype)[spec]
    q_nn = tq.quantize_dynamic(model, spec_nn, dtype=dtype)
    q_fast = tq.quantize_dynamic(fast, spec_fast, dtype=dtype)
    assert_same_quantized(q_nn, q_fast)
    assert recurrent_class(q_fast) is getattr(nnqd, nn_cls.__name__)  # quantized, never a silent no-op
    # inplace=False: the float models are untouched, and still what they were.
    assert recurrent_class(fast) is TWINS[nn_cls]
    assert not hasattr(fast.rnn if hasattr(fast, "rnn") else fast.cell, "qconfig")


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_spec_naming_torch_nn_quantizes_the_fastrnn_twin(cls):
    """Fails without fastrnn/_quantization.py: the spec names torch.nn's class, the model holds fastrnn's."""
    twin = TWINS[cls]
    model = nn.Sequential(twin(E, H))
    quantized = tq.quantize_dynamic(model, {cls}, dtype=torch.qint8)
    assert type(quantized[0]) is getattr(nnqd, cls.__name__)


def test_rnn_stays_unquantized_as_in_torch_nn():
    torch.manual_seed(0)
    for rnn in (nn.RNN(E, H), nn.RNN(E, H, num_layers=2, nonlinearity="relu", bidirectional=True)):
        model = SeqModel(rnn).eval()
        fast = fastrnn.convert(copy.deepcopy(model))
        assert type(fast.rnn) is fastrnn.RNN
        for spec_nn, spec_fast in ((None, None), ({nn.RNN, nn.Linear}, {nn.RNN, nn.Linear}),
                                   ({nn.RNN, nn.Linear}, {fastrnn.RNN, nn.Linear}), ({"rnn"}, {"rnn"})):
            for dtype in DTYPES:
                q_nn = tq.quantize_dynamic(model, spec_nn, dtype=dtype)
                q_fast = tq.quantize_dynamic(fast, spec_fast, dtype=dtype)
                assert type(q_nn.rnn) is nn.RNN and type(q_fast.rnn) is fastrnn.RNN
                assert not hasattr(q_fast.rnn, "qconfig")
                x = tokens()
                torch.testing.assert_close(q_fast(x), q_nn(x))  # fastrnn's kernels against torch.nn's


class MyQuantizedLSTM(nnqd.LSTM):
    """A user's target class for nn.LSTM."""


class MyQuantizedGRUCell(nnqd.GRUCell):
    pass


def _without(mapping, *keys):
    return {k: v for k, v in mapping.items() if k not in keys}


MAPPINGS = {
    # A mapping the user wrote from scratch, naming torch.nn's classes only.
    "from-scratch": lambda: {nn.LSTM: nnqd.LSTM, nn.GRU: nnqd.GRU, nn.LSTMCell: nnqd.LSTMCell,
                             nn.GRUCell: nnqd.GRUCell, nn.RNNCell: nnqd.RNNCell, nn.Linear: nnqd.Linear},
    # A copy of the default (which holds fastrnn's entries too), retargeting torch.nn's classes.
    "default-retargeted": lambda: {**tq.get_default_dynamic_quant_module_mappings(), nn.LSTM: MyQuantizedLSTM,
                                   nn.GRUCell: MyQuantizedGRUCell},
    # A copy of the default dropping torch.nn's classes: torch.nn's stay float, so must fastrnn's.
    "default-dropped": lambda: _without(tq.get_default_dynamic_quant_module_mappings(), nn.LSTM, nn.GRU,
                                        nn.LSTMCell, nn.GRUCell, nn.RNNCell),
    "default": lambda: tq.get_default_dynamic_quant_module_mappings(),
    "linear-only": lambda: {nn.Linear: nnqd.Linear},
}


@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("mapping", list(MAPPINGS))
@pytest.mark.parametrize("name", ["lstm-2layer-bidir-batchfirst", "gru", "lstmcell", "grucell", "rnncell-relu"])
def test_user_mapping_matches_torch_nn(name, mapping, dtype):
    model, fast = make_pair(name)
    nn_cls = recurrent_class(model)
    for spec_nn, spec_fast in ((None, None), ({nn_cls}, {TWINS[nn_cls]})):
        q_nn = tq.quantize_dynamic(model, spec_nn, dtype=dtype, mapping=MAPPINGS[mapping]())
        q_fast = tq.quantize_dynamic(fast, spec_fast, dtype=dtype, mapping=MAPPINGS[mapping]())
        assert_same_quantized(q_nn, q_fast)
        quantized = mapping in ("from-scratch", "default-retargeted", "default")
        assert (recurrent_class(q_fast) is TWINS[nn_cls]) is not quantized


def test_user_mapping_naming_the_twin_is_honoured():
    seen = []

    class Mine:
        @classmethod
        def from_float(cls, mod):
            seen.append(type(mod))
            return nn.Identity()

    model = nn.Sequential(fastrnn.LSTM(E, H))
    quantized = tq.quantize_dynamic(model, {nn.LSTM}, mapping={nn.LSTM: nnqd.LSTM, fastrnn.LSTM: Mine})
    assert seen == [fastrnn.LSTM] and type(quantized[0]) is nn.Identity


def test_legacy_torch_quantization_alias():
    model, fast = make_pair("lstm-bidir")
    q_nn = torch.quantization.quantize_dynamic(model, {nn.LSTM})
    q_fast = torch.quantization.quantize_dynamic(fast, {nn.LSTM})
    assert_same_quantized(q_nn, q_fast)


def test_manual_propagate_and_convert():
    """propagate_qconfig_ / convert imported from torch before any call (bound to torch's own functions)."""
    from torch.ao.quantization import convert, propagate_qconfig_

    model, fast = make_pair("grucell")
    for m in (model, fast):
        propagate_qconfig_(m, {nn.GRUCell: tq.default_dynamic_qconfig})
        convert(m, tq.get_default_dynamic_quant_module_mappings(), inplace=True)
    assert type(fast.cell) is nnqd.GRUCell
    assert_same_quantized(model, fast)


def test_inplace_and_forward_hooks_carry_over():
    model, fast = make_pair("lstm")
    calls = []
    fast.rnn.register_forward_hook(lambda mod, args, out: calls.append(type(mod)))
    q_fast = tq.quantize_dynamic(fast, {nn.LSTM}, inplace=True)
    assert q_fast is fast and type(fast.rnn) is nnqd.LSTM
    fast(tokens())
    assert calls == [nnqd.LSTM]  # as swap_module carries a torch.nn module's hooks over


@pytest.mark.parametrize("kind", ["bias-false", "parametrized"])
def test_errors_match_torch_nn(kind):
    """What torch refuses for torch.nn's module it refuses for fastrnn's, with the same exception."""
    def build(cls):
        module = cls(E, H, bias=False) if kind == "bias-false" else cls(E, H)
        if kind == "parametrized":
            class Identity(nn.Module):
                def forward(self, w):
                    return w
            torch.nn.utils.parametrize.register_parametrization(module, "weight_hh_l0", Identity())
        return nn.Sequential(module)

    messages = []
    for cls in (nn.LSTM, fastrnn.LSTM):
        with pytest.raises(AssertionError) as info:
            tq.quantize_dynamic(build(cls), {nn.LSTM})
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_default_mapping_entries():
    defaults = tq.get_default_dynamic_quant_module_mappings()
    propagation = tq.get_default_qconfig_propagation_list()
    for nn_cls, twin in TWINS.items():
        assert (twin in defaults) == (nn_cls in defaults)  # nn.RNN: in neither
        assert (twin in propagation) == (nn_cls in propagation)
    # Used directly, the default entry quantizes to torch.nn's class too.
    lstm = fastrnn.LSTM(E, H)
    lstm.qconfig = tq.default_dynamic_qconfig
    assert type(tq.get_dynamic_quant_module_class(fastrnn.LSTM).from_float(lstm)) is nnqd.LSTM


def test_hooks_installed_once_with_torchs_signatures():
    originals = {}
    for name in ("_propagate_qconfig_helper", "swap_module"):
        wrapper = getattr(QUANTIZE, name)
        assert getattr(wrapper, "_fastrnn_hook", False)
        originals[name] = wrapper.__wrapped__
        assert not getattr(wrapper.__wrapped__, "_fastrnn_hook", False)  # wrapped exactly once
        assert inspect.signature(wrapper) == inspect.signature(wrapper.__wrapped__)
    entries = {twin: tq.get_default_dynamic_quant_module_mappings().get(twin) for twin in TWINS.values()}
    importlib.reload(_quantization)
    for name, original in originals.items():
        assert getattr(QUANTIZE, name).__wrapped__ is original
    assert {twin: tq.get_default_dynamic_quant_module_mappings().get(twin) for twin in TWINS.values()} == entries
    test_spec_naming_torch_nn_quantizes_the_fastrnn_twin(nn.LSTM)
