"""fastrnn.convert(model): every torch.nn RNN/LSTM/GRU and cell, wherever it is nested, becomes its
fastrnn twin holding the very same Parameter objects; outputs, optimizers and train/eval flags carry over."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fastrnn


pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

# Tolerances per dtype for the same computation done two ways. float64: summation order costs ~1e-14
# relative here, far below rtol 1e-9 (and far below float32's eps, so a float computation would fail).
# Other dtypes: torch.testing's defaults for the dtype (float32: rtol 1.3e-6, atol 1e-5).
_TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-11)}


def assert_close(got, want, **kwargs):
    torch.testing.assert_close(got, want, **_TOLERANCES.get(want.dtype, {}), **kwargs)

TWINS = {nn.LSTM: fastrnn.LSTM, nn.GRU: fastrnn.GRU, nn.RNN: fastrnn.RNN, nn.LSTMCell: fastrnn.LSTMCell,
         nn.GRUCell: fastrnn.GRUCell, nn.RNNCell: fastrnn.RNNCell}


class Block(nn.Module):
    """A custom module holding recurrent modules as attributes and in a ModuleList / ModuleDict."""

    def __init__(self, F):
        super().__init__()
        self.gru = nn.GRU(F, 5, num_layers=2, batch_first=True, bidirectional=True, dropout=0.3)
        self.cells = nn.ModuleList([nn.LSTMCell(10, 6), nn.RNNCell(6, 4, nonlinearity="relu", bias=False)])
        self.by_name = nn.ModuleDict({"grucell": nn.GRUCell(4, 3)})

    def forward(self, x):
        y, h = self.gru(x)                          # [B, T, 10]
        hx = self.cells[0](y[:, -1])                # ([B, 6], [B, 6])
        r = self.cells[1](hx[0])                    # [B, 4]
        return y, h, hx, self.by_name["grucell"](r)


class Model(nn.Module):
    def __init__(self, F=4):
        super().__init__()
        self.front = nn.Sequential(nn.Linear(3, F), nn.Tanh())
        self.lstm = nn.LSTM(F, 6, num_layers=2, proj_size=3, bidirectional=True, batch_first=True)
        self.stack = nn.Sequential(nn.Identity(), nn.Sequential(Block(6)))
        self.rnn = nn.RNN(6, 7, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(7 + 3, 2)

    def forward(self, x):
        x = self.front(x)
        y, (h, c) = self.lstm(x)                    # y [B, T, 6]
        y2, h2, hx, g = self.stack(y)
        z, hz = self.rnn(y)
        out = self.head(torch.cat([z[:, -1], g], -1))
        return out, (h, c), y2, h2, hx, hz


def flatten(x):
    if isinstance(x, (tuple, list)):
        return [t for item in x for t in flatten(item)]
    return [x]


def recurrent_modules(model):
    return [(n, m) for n, m in model.named_modules() if type(m) in TWINS or type(m) in TWINS.values()]


def make_model(seed=0):
    torch.manual_seed(seed)
    return Model().double()


def test_every_recurrent_module_is_replaced_by_its_twin_with_the_same_parameters():
    model = make_model()
    before = {n: (type(m), dict(m.named_parameters(recurse=False))) for n, m in recurrent_modules(model)}
    assert sorted(t.__name__ for t, _ in before.values()) == sorted(
        ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
    all_params = list(model.parameters())
    names = [n for n, _ in model.named_parameters()]

    returned = fastrnn.convert(model)

    assert returned is model
    after = dict(recurrent_modules(model))
    assert set(after) == set(before)
    for name, (old_type, old_params) in before.items():
        m = after[name]
        assert type(m) is TWINS[old_type], name
        new_params = dict(m.named_parameters(recurse=False))
        assert list(new_params) == list(old_params), name
        for pname, p in old_params.items():
            assert new_params[pname] is p, f"{name}.{pname} is not the same Parameter object"
    # The model as a whole: same parameters, same order, same names; nothing left of torch.nn's classes.
    assert all(p is q for p, q in zip(model.parameters(), all_params))
    assert [n for n, _ in model.named_parameters()] == names
    assert not any(type(m) in TWINS for m in model.modules())


def test_configuration_is_carried_over():
    model = make_model()
    originals = {n: copy.deepcopy(m) for n, m in recurrent_modules(model)}
    fastrnn.convert(model)
    for name, m in recurrent_modules(model):
        old = originals[name]
        assert repr(m) == repr(old), name
        for attr in ("input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                     "proj_size", "nonlinearity", "mode"):
            if hasattr(old, attr):
                assert getattr(m, attr) == getattr(old, attr), f"{name}.{attr}"
        assert all(p.device.type == "cpu" for p in m.parameters())
        assert not any(b.device.type == "meta" for b in m.buffers())


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_outputs_equal_before_and_after(training):
    model = make_model()
    model.train(training)
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    torch.manual_seed(42)  # same dropout masks in training mode
    want = model(x)
    fastrnn.convert(model)
    torch.manual_seed(42)
    got = model(x)
    for g, w in zip(flatten(got), flatten(want)):
        assert_close(g, w)
    if training:  # dropout (in the GRU) is on: a different seed gives a different result
        torch.manual_seed(43)
        assert not torch.allclose(model(x)[2], got[2])


def test_training_flags_are_preserved_per_module():
    model = make_model()
    model.train()
    model.lstm.eval()
    model.stack[1][0].cells[1].eval()
    flags = {n: m.training for n, m in model.named_modules()}
    assert set(flags.values()) == {True, False}
    fastrnn.convert(model)
    assert {n: m.training for n, m in model.named_modules()} == flags
    model.eval()
    assert not any(m.training for m in model.modules())
    fastrnn.convert(model)
    assert not any(m.training for m in model.modules())


def test_optimizer_created_before_convert_keeps_working():
    model = make_model()
    reference = make_model()  # an unconverted copy, trained the same way
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-2)
    x = torch.randn(4, 6, 3, dtype=torch.float64)

    def step(m, o, seed):
        o.zero_grad()
        torch.manual_seed(seed)  # the same dropout masks (the GRU has dropout; both models train)
        out = m(x)
        sum(t.pow(2).sum() for t in flatten(out)).backward()
        o.step()

    step(model, opt, 0)  # optimizer state exists before convert
    step(reference, ref_opt, 0)
    fastrnn.convert(model)
    w_hh = model.stack[1][0].gru.weight_hh_l1_reverse
    cell_w = model.stack[1][0].by_name["grucell"].weight_ih
    before = (w_hh.detach().clone(), cell_w.detach().clone())
    model.eval()
    out_before = model(x)[0].detach().clone()
    model.train()
    step(model, opt, 1)
    step(reference, ref_opt, 1)
    model.eval()
    reference.eval()
    # The optimizer updated the Parameters the converted modules read...
    assert not torch.equal(w_hh, before[0])
    assert not torch.equal(cell_w, before[1])
    assert not torch.allclose(model(x)[0], out_before)
    # ...exactly as it updates the unconverted model.
    for (n, p), q in zip(model.named_parameters(), reference.parameters()):
        assert_close(p, q, msg=n)
    for g, w in zip(flatten(model(x)), flatten(reference(x))):
        assert_close(g, w)


def test_state_dict_unchanged_by_convert():
    model = make_model()
    sd = model.state_dict()
    fastrnn.convert(model)
    sd2 = model.state_dict()
    assert list(sd2) == list(sd)
    assert all(sd2[k].data_ptr() == sd[k].data_ptr() for k in sd)


def test_convert_a_bare_recurrent_module_returns_its_twin():
    torch.manual_seed(0)
    for module in (nn.LSTM(3, 4, num_layers=2), nn.GRU(3, 4, batch_first=True), nn.RNN(3, 4, nonlinearity="relu"),
                   nn.LSTMCell(3, 4), nn.GRUCell(3, 4, bias=False), nn.RNNCell(3, 4, nonlinearity="relu")):
        module.eval()
        twin = fastrnn.convert(module)
        assert type(twin) is TWINS[type(module)]
        assert all(p is q for p, q in zip(twin.parameters(), module.parameters()))
        assert twin.training is False
        x = torch.randn(5, 2, 3) if isinstance(module, nn.RNNBase) else torch.randn(2, 3)
        for g, w in zip(flatten(twin(x)), flatten(module(x))):
            assert_close(g, w)


def test_convert_is_idempotent_and_leaves_other_modules_alone():
    model = make_model()
    others = {n: m for n, m in model.named_modules() if type(m) not in TWINS}
    fastrnn.convert(model)
    converted = dict(model.named_modules())
    for n, m in others.items():
        assert converted[n] is m
    fastrnn.convert(model)
    assert dict(model.named_modules()) == converted  # the very same module objects again


def test_converted_model_keeps_a_float32_dtype():
    torch.manual_seed(0)
    model = Model()  # float32
    x = torch.randn(2, 4, 3)
    model.eval()
    want = model(x)
    fastrnn.convert(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for g, w in zip(flatten(model(x)), flatten(want)):
        assert_close(g, w)


def test_hooks_registered_before_convert_still_fire_and_remove():
    model = nn.Sequential(nn.LSTM(3, 4), )
    calls = []
    handle = model[0].register_forward_hook(lambda module, args, out: calls.append(type(module)))
    pre = model[0].register_forward_pre_hook(lambda module, args: calls.append("pre"))
    fastrnn.convert(model)
    assert isinstance(model[0], fastrnn.LSTM)
    model(torch.randn(2, 1, 3))
    assert calls == ["pre", fastrnn.LSTM]
    handle.remove()
    pre.remove()
    model(torch.randn(2, 1, 3))
    assert calls == ["pre", fastrnn.LSTM], "a removed hook fired"


class MyLSTM(nn.LSTM):
    def forward(self, x, hx=None):  # a subclass may change what forward does
        out, state = super().forward(x, hx)
        return out * 2, state


def test_subclass_is_left_as_torch_nn_with_a_warning():
    model = nn.Sequential(MyLSTM(3, 4), nn.GRU(4, 2))
    with pytest.warns(RuntimeWarning, match=r"left 0 \(MyLSTM\) as torch.nn because its class .*MyLSTM is a subclass"):
        fastrnn.convert(model)
    assert type(model[0]) is MyLSTM and isinstance(model[1], fastrnn.GRU)
    with pytest.warns(RuntimeWarning, match="MyLSTM"):
        assert fastrnn.convert(MyLSTM(3, 4)).__class__ is MyLSTM


def test_parametrized_module_is_left_as_torch_nn_with_a_warning():
    from torch.nn.utils import parametrize

    class Scale(nn.Module):
        def forward(self, w):
            return 0.5 * w

    model = nn.Sequential(nn.LSTM(3, 4))
    parametrize.register_parametrization(model[0], "weight_hh_l0", Scale())
    with pytest.warns(RuntimeWarning, match=r"left 0 .* as torch.nn"):
        fastrnn.convert(model)
    assert not isinstance(model[0], fastrnn.LSTM)


def test_reparametrized_weights_are_left_as_torch_nn_with_a_warning():
    model = nn.Sequential(nn.GRU(3, 4))
    del model[0]._parameters["weight_hh_l0"]  # what weight_norm does: the weight becomes g * v / |v|
    model[0].weight_hh_l0_g = nn.Parameter(torch.ones(12, 1))
    model[0].weight_hh_l0_v = nn.Parameter(torch.randn(12, 4))
    with pytest.warns(RuntimeWarning, match="are not torch.nn's"):
        fastrnn.convert(model)
    assert not isinstance(model[0], fastrnn.GRU)
