"""Drop-in twins of torch.nn.RNN/LSTM/GRU and their cells, running fastrnn's kernels.

Same constructor arguments, parameter names, shapes, registration order and initialisation
as torch.nn (the layers subclass nn.RNNBase, the cells nn.RNNCellBase), so state_dicts and
optimizer states are interchangeable. They do not subclass nn.LSTM/nn.GRU/nn.RNN, because
torch.compile refuses to trace those classes: `isinstance(fastrnn.LSTM(...), nn.LSTM)` is False.

Weights are read by attribute on every forward, so parametrizations and weight norm work.
"""

from __future__ import annotations

import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import functional, reference


def _check_batch_sizes(batch_sizes: Tensor, data: Tensor) -> None:
    """A PackedSequence's batch_sizes must be positive, non-increasing and sum to data's rows.

    Deliberately stricter than torch.nn, which runs a malformed hand-built PackedSequence silently.
    """
    if not isinstance(batch_sizes, Tensor) or batch_sizes.dim() != 1 or batch_sizes.dtype != torch.int64:
        raise ValueError(
            "PackedSequence.batch_sizes must be a 1-D int64 tensor, got "
            f"{type(batch_sizes).__name__ if not isinstance(batch_sizes, Tensor) else batch_sizes.dtype} "
            f"with shape {tuple(getattr(batch_sizes, 'shape', ()))}"
        )
    if batch_sizes.device.type != "cpu":
        raise ValueError(f"PackedSequence.batch_sizes must be on the CPU, got {batch_sizes.device}")
    if batch_sizes.numel() == 0:
        raise ValueError("PackedSequence.batch_sizes must not be empty (zero time steps)")
    sizes = batch_sizes.tolist()
    if min(sizes) <= 0:
        raise ValueError(f"PackedSequence.batch_sizes must all be positive, got {sizes}")
    if any(b > a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"PackedSequence.batch_sizes must be non-increasing, got {sizes}")
    if data.dim() != 2:
        raise ValueError(f"PackedSequence.data must be 2-D [sum(batch_sizes), features], got {data.dim()}-D")
    if sum(sizes) != data.size(0):
        raise ValueError(
            f"PackedSequence.batch_sizes must sum to data.size(0) = {data.size(0)}, got sum {sum(sizes)}"
        )


def _check_permutation(name: str, perm, batch: int) -> None:
    if perm is None:
        return
    if perm.dim() != 1 or perm.numel() != batch or (perm.device.type != "meta" and not torch.equal(
        perm.sort().values.cpu(), torch.arange(batch)  # (values of meta tensors are unknown: shapes only)
    )):
        raise ValueError(f"PackedSequence.{name} must be a permutation of range({batch}), got {perm.tolist()}")


def _check_state(name: str, what: str, t: Tensor, expected: tuple, dtype, device) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: {what} must be a Tensor, got {type(t).__name__}")
    if tuple(t.shape) != tuple(expected):
        raise RuntimeError(f"{name}: Expected {what} size {tuple(expected)}, got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise RuntimeError(f"{name}: {what} must have dtype {dtype} (the input's), got {t.dtype}")
    if t.device != device:
        raise RuntimeError(f"{name}: {what} must be on {device} (the input's device), got {t.device}")


def _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size) -> None:
    """nn.RNNBase's argument checks, in its order and with its exception classes, but naming the value given.

    (nn.RNNBase's own messages, e.g. "hidden_size must be greater than zero", do not say what was given.)
    """
    if not isinstance(dropout, numbers.Number) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
        raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                         f"element being zeroed, got {dropout!r}")
    if not isinstance(bias, bool):
        raise TypeError(f"bias should be of type bool, got: {type(bias).__name__}")
    if not isinstance(batch_first, bool):
        raise TypeError(f"batch_first should be of type bool, got: {type(batch_first).__name__}")
    if not isinstance(input_size, int):
        raise TypeError(f"input_size should be of type int, got: {type(input_size).__name__}")
    if input_size <= 0:
        raise ValueError(f"input_size must be greater than zero, got {input_size}")
    if not isinstance(hidden_size, int):
        raise TypeError(f"hidden_size should be of type int, got: {type(hidden_size).__name__}")
    if hidden_size <= 0:
        raise ValueError(f"hidden_size must be greater than zero, got {hidden_size}")
    if isinstance(num_layers, numbers.Real) and num_layers <= 0:
        raise ValueError(f"num_layers must be greater than zero, got {num_layers}")
    if not isinstance(num_layers, int):
        raise TypeError(f"num_layers should be of type int, got: {type(num_layers).__name__}")
    if proj_size < 0:
        raise ValueError(f"proj_size should be a positive integer or zero to disable projections, got {proj_size}")
    if proj_size >= hidden_size:
        raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} and "
                         f"hidden_size={hidden_size}")


def _call(impl, *args):
    return impl(*args)


class _RNNBase(nn.RNNBase):
    """Shared forward for RNN/LSTM/GRU; nn.RNNBase supplies the parameters and their init."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 device=None, dtype=None) -> None:
        _check_constructor_args(input_size, hidden_size, num_layers, bias, batch_first, dropout, proj_size)
        super().__init__(mode, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)

    def __prepare_scriptable__(self) -> nn.Module:
        return _prepare_scriptable(self)

    def flatten_parameters(self) -> None:
        """A no-op: fastrnn reads each weight by attribute and needs no flat cuDNN buffer."""

    def _weights(self):
        return [getattr(self, name) for name in self._flat_weights_names]

    def forward(self, input, hx=None):
        name = type(self).__name__
        is_lstm = self.mode == "LSTM"
        D = 2 if self.bidirectional else 1
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        weights = self._weights()
        w0 = weights[0]

        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            _check_batch_sizes(batch_sizes, data)
            B = int(batch_sizes[0])
            _check_permutation("sorted_indices", sorted_indices, B)
            _check_permutation("unsorted_indices", unsorted_indices, B)
            is_batched = True
        else:
            if not isinstance(input, Tensor):
                raise TypeError(f"{name}: input must be a Tensor or PackedSequence, got {type(input).__name__}")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D instead")
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            data = input if is_batched else input.unsqueeze(batch_dim)
            batch_sizes = sorted_indices = unsorted_indices = None
            B = data.size(batch_dim)
            if data.size(1 - batch_dim) == 0:
                raise RuntimeError(f"{name}: Expected input with at least one time step, got 0 (input shape "
                                   f"{tuple(input.shape)})")

        if data.dtype != w0.dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"{name}: input dtype ({data.dtype}) does not match weight dtype ({w0.dtype}). "
                f"Convert input: input.to({w0.dtype}), or convert model: model.to({data.dtype})"
            )
        if data.size(-1) != self.input_size:
            raise RuntimeError(
                f"{name}: input.size(-1) must be equal to input_size. Expected {self.input_size}, got {data.size(-1)}"
            )
        if data.device != w0.device:
            raise RuntimeError(f"{name}: input is on {data.device} but the parameters are on {w0.device}")
        impl = functional.implementation_for(data.device, self.mode)
        # torch's own op (implementation_for says when) takes what torch.nn gives it, autocast doing its casts.
        cast_for_autocast = impl is not functional.torch_nn_rnn and torch._C._is_any_autocast_enabled()
        dtype = functional.autocast_dtype(self.mode, False, data.device, data.dtype) or (
            w0.dtype if cast_for_autocast else data.dtype)
        if cast_for_autocast:
            data = data.to(dtype)
            if dtype != w0.dtype:  # under autocast: torch.nn casts its weights (and states) too
                weights = [w.to(dtype) for w in weights]

        h_shape = (self.num_layers * D, B, P)
        c_shape = (self.num_layers * D, B, self.hidden_size)
        if hx is None:
            h0 = data.new_zeros(h_shape)
            hx = (h0, data.new_zeros(c_shape)) if is_lstm else h0
        else:
            want_dim = 3 if is_batched else 2
            states = tuple(hx) if is_lstm else (hx,)
            if is_lstm and len(states) != 2:
                raise RuntimeError(f"{name}: hx must be a tuple (h_0, c_0), got {len(states)} tensors")
            for s in states:
                if not isinstance(s, Tensor):
                    raise TypeError(f"{name}: hx must hold Tensors, got {type(s).__name__}")
            if cast_for_autocast:
                states = tuple(s.to(dtype) if s.is_floating_point() else s for s in states)
            if any(s.dim() != want_dim for s in states):
                dims = ", ".join(f"{s.dim()}-D" for s in states)
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"{name}: For {kind} input, hx should also be {want_dim}-D but got ({dims}) tensors")
            # Checked as given, so the message shows the user's shapes (no batch dim when unbatched).
            given_h, given_c = (h_shape, c_shape) if is_batched else (h_shape[::2], c_shape[::2])
            _check_state(name, "hx[0]" if is_lstm else "hx", states[0], given_h, dtype, data.device)
            if is_lstm:
                _check_state(name, "hx[1]", states[1], given_c, dtype, data.device)
            if not is_batched:
                states = tuple(s.unsqueeze(1) for s in states)
            if sorted_indices is not None:
                states = tuple(s.index_select(1, sorted_indices) for s in states)
            hx = states if is_lstm else states[0]

        run = functional.run_without_autocast if cast_for_autocast else _call
        output, hidden = run(
            impl, self.mode, data, hx, weights, self.bias, self.num_layers, self.dropout, self.training,
            self.bidirectional, self.batch_first, batch_sizes, self.proj_size > 0)

        if packed:
            output = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            if unsorted_indices is not None:
                hidden = (tuple(h.index_select(1, unsorted_indices) for h in hidden) if is_lstm
                          else hidden.index_select(1, unsorted_indices))
        elif not is_batched:
            output = output.squeeze(batch_dim)
            hidden = tuple(h.squeeze(1) for h in hidden) if is_lstm else hidden.squeeze(1)
        return output, hidden


class RNN(_RNNBase):
    """Twin of torch.nn.RNN (Elman RNN with tanh or relu)."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        if len(args) > 3:
            self.nonlinearity = args[3]
            args = args[:3] + args[4:]
        else:
            self.nonlinearity = kwargs.pop("nonlinearity", "tanh")
        if self.nonlinearity == "tanh":
            mode = "RNN_TANH"
        elif self.nonlinearity == "relu":
            mode = "RNN_RELU"
        else:
            raise ValueError(f"Unknown nonlinearity '{self.nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(mode, *args, **kwargs)


class LSTM(_RNNBase):
    """Twin of torch.nn.LSTM, proj_size included."""

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)


class GRU(_RNNBase):
    """Twin of torch.nn.GRU."""

    def __init__(self, *args, **kwargs):
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)


# ------------------------------------------------------------------ cells
# A cell is one step of the layer op (T = 1, D = 1): the same kernels and gate math.

class _CellBase(nn.RNNCellBase):
    _mode = ""

    def __prepare_scriptable__(self) -> nn.Module:
        return _prepare_scriptable(self)

    def _prepare(self, input: Tensor, states: tuple, n_states: int):
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise TypeError(f"{name}: input must be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        for i, s in enumerate(states):
            if s is not None and s.dim() not in (1, 2):
                what = f"hx[{i}]" if n_states == 2 else "hidden"
                raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.dim()}D instead")
        is_batched = input.dim() == 2
        x = input if is_batched else input.unsqueeze(0)
        w = self.weight_ih
        if x.dtype != w.dtype and not torch._C._is_any_autocast_enabled():
            # RuntimeError, as torch.nn's cells raise for this (unlike its RNN/LSTM/GRU: ValueError).
            raise RuntimeError(f"{name}: input dtype ({x.dtype}) does not match weight dtype ({w.dtype})")
        impl = functional.implementation_for(x.device, self._mode, is_cell=True)
        # torch's own cell op (implementation_for says when) takes what torch.nn gives it, autocast casting.
        cast_for_autocast = impl is not functional.torch_nn_rnn and torch._C._is_any_autocast_enabled()
        if cast_for_autocast:
            x = x.to(functional.autocast_dtype(self._mode, True, x.device, x.dtype) or w.dtype)
        if x.size(1) != self.input_size:
            raise RuntimeError(f"{name}: input has inconsistent input_size: got {x.size(1)} expected {self.input_size}")
        if x.device != w.device:
            raise RuntimeError(f"{name}: input is on {x.device} but the parameters are on {w.device}")
        B = x.size(0)
        out = []
        for i, s in enumerate(states):
            if s is None:
                s = x.new_zeros(B, self.hidden_size)
            else:
                # Checked as given, so the message shows the user's shapes: [B, H], or [H] unbatched.
                what = f"hx[{i}]" if n_states == 2 else "hx"
                expected = (B, self.hidden_size) if is_batched else (self.hidden_size,)
                if cast_for_autocast and s.is_floating_point():
                    s = s.to(x.dtype)  # as torch.nn's cells under autocast
                _check_state(name, what, s, expected, x.dtype, x.device)
                s = s if is_batched else s.unsqueeze(0)
            out.append(s)
        return x, out, is_batched, impl

    def _run(self, x: Tensor, states: list, impl):
        weights = [self.weight_ih, self.weight_hh] + ([self.bias_ih, self.bias_hh] if self.bias else [])
        if impl is functional.torch_nn_rnn:
            return functional.torch_nn_cell(self._mode, x, states, weights)
        weights = [w.to(x.dtype) for w in weights]  # a no-op unless autocast chose another dtype
        hx = (states[0].unsqueeze(0), states[1].unsqueeze(0)) if len(states) == 2 else states[0].unsqueeze(0)
        _, hidden = functional.run_without_autocast(impl, self._mode, x.unsqueeze(0), hx, weights, self.bias, 1, 0.0,
                                                    False, False, False)
        return tuple(h[0] for h in hidden) if len(states) == 2 else hidden[0]


class RNNCell(_CellBase):
    """Twin of torch.nn.RNNCell."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None) -> None:
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
        super().__init__(input_size, hidden_size, bias, num_chunks=1, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity

    @property
    def _mode(self):
        return "RNN_TANH" if self.nonlinearity == "tanh" else "RNN_RELU"

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, states, is_batched, impl = self._prepare(input, (hx,), 1)
        h = self._run(x, states, impl)
        return h if is_batched else h.squeeze(0)


class LSTMCell(_CellBase):
    """Twin of torch.nn.LSTMCell."""

    _mode = "LSTM"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        x, states, is_batched, impl = self._prepare(input, (None, None) if hx is None else tuple(hx), 2)
        h, c = self._run(x, states, impl)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_CellBase):
    """Twin of torch.nn.GRUCell."""

    _mode = "GRU"

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        x, states, is_batched, impl = self._prepare(input, (hx,), 1)
        h = self._run(x, states, impl)
        return h if is_batched else h.squeeze(0)


# ------------------------------------------------------------------ convert

_TWINS = {nn.LSTM: LSTM, nn.GRU: GRU, nn.RNN: RNN, nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell, nn.RNNCell: RNNCell}
TORCH_NN_OF = {twin: nn_cls for nn_cls, twin in _TWINS.items()}  # fastrnn.LSTM -> nn.LSTM, ...


def _constructor_kwargs(module: nn.Module) -> dict:
    """The constructor arguments (but sizes, device, dtype) that rebuild `module`, a torch.nn recurrent module or
    a fastrnn twin: the two take the same ones."""
    if isinstance(module, nn.RNNBase):
        kwargs = dict(num_layers=module.num_layers, bias=module.bias, batch_first=module.batch_first,
                      dropout=module.dropout, bidirectional=module.bidirectional)
        if module.mode == "LSTM":
            kwargs["proj_size"] = module.proj_size
    else:
        kwargs = dict(bias=module.bias)
    if hasattr(module, "nonlinearity"):  # RNN and RNNCell, torch.nn's and fastrnn's
        kwargs["nonlinearity"] = module.nonlinearity
    return kwargs


# Per-module hook registries (torch.nn.Module attributes). A twin shares the very same dicts, so a
# hook registered before convert() still fires, and its handle still removes it.
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
               "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
               "_state_dict_pre_hooks", "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _twin_of(module: nn.Module) -> nn.Module | str:
    """The fastrnn twin of `module`, holding its Parameters and hooks; or, if it cannot have one, why not."""
    cls = _TWINS.get(type(module))
    if cls is None:
        base = next(c for c in _TWINS if isinstance(module, c))
        return (f"its class {type(module).__qualname__} is a subclass of torch.nn.{base.__name__} (it may override "
                "forward, or carry a parametrization), which fastrnn does not replace")
    twin = cls(module.input_size, module.hidden_size, device="meta", dtype=next(module.parameters()).dtype,
               **_constructor_kwargs(module))
    names = sorted(n for n, _ in module.named_parameters(recurse=False))
    expected = sorted(n for n, _ in twin.named_parameters(recurse=False))
    if names != expected:
        return f"its parameters {names} are not torch.nn's {expected} (weight_norm or another reparametrization)"
    # The very same Parameter objects, so an existing optimizer keeps working.
    for name, param in module.named_parameters(recurse=False):
        setattr(twin, name, param)
    for hooks in _HOOK_DICTS:
        if hasattr(module, hooks):
            setattr(twin, hooks, getattr(module, hooks))
    twin.train(module.training)
    return twin


def torch_nn_twin(module: nn.Module) -> nn.Module:
    """The torch.nn module (nn.LSTM, ...) equivalent to the fastrnn `module`, holding its very Parameters."""
    cls = TORCH_NN_OF[type(module)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. dropout with one layer: the user was warned building `module`
        twin = cls(module.input_size, module.hidden_size, device="meta", dtype=next(module.parameters()).dtype,
                   **_constructor_kwargs(module))
    for name, param in module.named_parameters(recurse=False):
        setattr(twin, name, param)
    twin.train(module.training)
    return twin


def _prepare_scriptable(module: nn.Module) -> nn.Module:
    # torch.jit.script calls __prepare_scriptable__ on every module before compiling it. fastrnn's forward
    # (PackedSequence checks, optional states, Python-side dispatch) is not TorchScript, while torch.nn's is
    # written for it: script torch.nn's twin on the same Parameters, so scripted models train the same weights
    # and save/load without fastrnn. Said once.
    functional._warn_once("script", "fastrnn: torch.jit.script compiles torch.nn's TorchScript code for fastrnn "
                          f"layers (here {type(module).__name__}), on the same parameters: the scripted model runs "
                          "torch's kernels, not fastrnn's.")
    return torch_nn_twin(module)


def _warn_not_converted(path: str, module: nn.Module, why: str) -> None:
    warnings.warn(f"fastrnn.convert: left {path or 'the model'} ({type(module).__name__}) as torch.nn because {why}",
                  RuntimeWarning, stacklevel=3)


def convert(model: nn.Module) -> nn.Module:
    """Replaces, in place, every torch.nn RNN/LSTM/GRU (and cell) inside `model` by its fastrnn twin.

    The twins hold the very same Parameter objects and the same hook registries (hooks registered
    before still fire; their handles still remove them). Returns `model` (or its twin, if `model`
    itself is one of those classes, since a module cannot replace itself in place). A module that
    cannot be replaced faithfully (a subclass, a parametrized module, reparametrized weights) is left
    as torch.nn with a RuntimeWarning naming it and why.
    """
    recurrent = tuple(_TWINS)
    if isinstance(model, recurrent):
        twin = _twin_of(model)
        if isinstance(twin, str):
            _warn_not_converted("", model, twin)
            return model
        return twin
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, recurrent):
                twin = _twin_of(child)
                if isinstance(twin, str):
                    _warn_not_converted(f"{parent_name}.{child_name}" if parent_name else child_name, child, twin)
                else:
                    setattr(parent, child_name, twin)
    return model
