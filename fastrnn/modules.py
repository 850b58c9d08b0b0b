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
    """A PackedSequence's batch_sizes must be positive, non-increasing and sum to data's rows (data: 2-D).

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


# ---------------------------------------------------------------- torch.nn's checks of a forward call
# Each error leads with torch.nn's own message (torch/nn/modules/rnn.py, or the ATen op it calls:
# aten/src/ATen/native/RNN.cpp) and raises its exception class, in its order; fastrnn's detail (what
# was given, which parameter) follows in parentheses. Where torch.nn has no message of its own for a
# case (it fails inside a matmul, or runs on), the message is that of ATen's check_attributes.

# c10's names of the dtypes, as ATen's messages print them ("Float", not "torch.float32").
_C10_NAMES = {torch.float64: "Double", torch.float32: "Float", torch.float16: "Half", torch.bfloat16: "BFloat16",
              torch.int64: "Long", torch.int32: "Int", torch.int16: "Short", torch.int8: "Char", torch.uint8: "Byte",
              torch.bool: "Bool", torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble"}
# caffe2's names of the dtypes, as at::mm's dtype message prints them.
_CAFFE2_NAMES = {torch.float64: "double", torch.float32: "float", torch.float16: "c10::Half",
                 torch.bfloat16: "c10::BFloat16", torch.int64: "long int", torch.int32: "int"}


def _no_dim(obj, detail: str) -> AttributeError:
    """What torch.nn raises for a non-tensor where it calls .dim()."""
    return AttributeError(f"'{type(obj).__name__}' object has no attribute 'dim' ({detail})")


def _check_same(name: str, attribute: str, expected, states, params) -> None:
    """ATen's check_attributes for one attribute ("device" or "dtype"): the states, then every parameter, have
    the input's. states and params: (name, tensor) pairs."""
    for kind, pairs in (("hidden", states), ("parameter", params)):
        for what, t in pairs:
            got = getattr(t, attribute)
            if got == expected:
                continue
            label = what if kind == "hidden" else f"parameter {what}"
            if attribute == "device":
                raise RuntimeError(f"Input and {kind} tensors are not at the same device, found input tensor at "
                                   f"{expected} and {kind} tensor at {got} ({name}: {label} is on {got}, expected "
                                   f"{expected}, the input's device)")
            raise RuntimeError(f"Input and {kind} tensors are not the same dtype, found input tensor with "
                               f"{_C10_NAMES.get(expected, expected)} and {kind} tensor with "
                               f"{_C10_NAMES.get(got, got)} ({name}: {label} has dtype {got}, expected {expected}, "
                               "the input's)")


def _params_match(params, device, dtype, shapes: dict) -> bool:
    """The common case, in one pass: every parameter on `device`, of `dtype` (None: any) and of its shape. When it
    holds, the ordered checks (_check_same, _check_param_shapes) skip the parameters."""
    for what, t in params:
        if t.device != device or (dtype is not None and t.dtype != dtype) or t.shape != shapes[what]:
            return False
    return True


def _check_param_shapes(name: str, params, expected: dict) -> None:
    """Every parameter of the shape the module's sizes give (torch.nn has no check of its own: it fails in a matmul
    or, for some, runs on them); fastrnn's kernels read each by these shapes."""
    for what, t in params:
        if t.shape != expected[what]:
            raise RuntimeError(f"{name}: parameter {what} must have shape {expected[what]} for this module's sizes, "
                               f"got {tuple(t.shape)}")


def _matmul_dtype_message(a: torch.dtype, b: torch.dtype, bias: bool) -> str:
    """ATen's message for a matmul of mixed dtypes, as torch.nn's cells raise it (addmm with a bias, mm without)."""
    if bias:
        return f"mat1 and mat2 must have the same dtype, but got {_C10_NAMES.get(a, a)} and {_C10_NAMES.get(b, b)}"
    return f"expected m1 and m2 to have the same dtype, but got: {_CAFFE2_NAMES.get(a, a)} != {_CAFFE2_NAMES.get(b, b)}"


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
        # (torch.nn has no check of its own here: its range(num_layers) raises)
        raise TypeError(f"'{type(num_layers).__name__}' object cannot be interpreted as an integer (num_layers should "
                        f"be of type int, got: {type(num_layers).__name__})")
    if proj_size < 0:
        raise ValueError(f"proj_size should be a positive integer or zero to disable projections, got {proj_size}")
    if proj_size >= hidden_size:
        raise ValueError(f"proj_size has to be smaller than hidden_size, got proj_size={proj_size} and "
                         f"hidden_size={hidden_size}")


def _attribute(module: nn.Module, name: str):
    """getattr(module, name) for a weight: a registered Parameter straight from _parameters (what getattr finds
    there, at a fifth of nn.Module.__getattr__'s cost, ~0.8 us a weight in a small call), anything else (a
    parametrization's property, weight norm's plain attribute) by getattr."""
    p = module._parameters.get(name)
    return p if p is not None else getattr(module, name)


def _call(impl, *args):
    return impl(*args)


# Each parameter's shape by name, per (mode, input_size, hidden_size, num_layers, bidirectional, proj_size).
_PARAM_SHAPES: dict[tuple, dict] = {}


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
        # Read by attribute, as torch.nn does (its _update_flat_weights), so parametrizations and weight norm work.
        return [_attribute(self, name) for name in self._flat_weights_names]

    def _param_shapes(self) -> dict:
        """Each parameter's shape for this module's sizes, by name (nn.RNNBase's); computed once per sizes."""
        key = (self.mode, self.input_size, self.hidden_size, self.num_layers, self.bidirectional, self.proj_size)
        shapes = _PARAM_SHAPES.get(key)
        if shapes is None:
            shapes = _PARAM_SHAPES[key] = self._compute_param_shapes()
        return shapes

    def _compute_param_shapes(self) -> dict:
        G = {"LSTM": 4, "GRU": 3}.get(self.mode, 1)
        D = 2 if self.bidirectional else 1
        H, P = self.hidden_size, self.proj_size if self.proj_size > 0 else self.hidden_size
        shapes = {}
        for layer in range(self.num_layers):
            for direction in range(D):
                sfx = f"_l{layer}" + ("_reverse" if direction == 1 else "")
                shapes["weight_ih" + sfx] = (G * H, self.input_size if layer == 0 else D * P)
                shapes["weight_hh" + sfx] = (G * H, P)
                shapes["bias_ih" + sfx] = shapes["bias_hh" + sfx] = (G * H,)
                shapes["weight_hr" + sfx] = (P, H)
        return shapes

    def _plain_call(self, input, hx, weights):
        """The states to run a common call with (a padded batched tensor, the states absent or of the right
        shapes, dtype and device, every parameter as the module's sizes say, no autocast, the kernels serving it),
        checked in a few operations; None for any other call, which forward's ordered checks then raise
        torch.nn's error for, or serve. (The ordered checks cost a small call ~25 us.)"""
        if not isinstance(input, Tensor) or input.dim() != 3 or torch._C._is_any_autocast_enabled():
            return None
        T, B = (input.shape[1], input.shape[0]) if self.batch_first else (input.shape[0], input.shape[1])
        device, dtype = input.device, input.dtype
        if T == 0 or input.shape[2] != self.input_size or dtype != weights[0].dtype:
            return None
        is_lstm = self.mode == "LSTM"
        D = 2 if self.bidirectional else 1
        h_shape = (self.num_layers * D, B, self.proj_size if self.proj_size > 0 else self.hidden_size)
        if hx is None:
            states = None
        else:
            states = tuple(hx) if is_lstm and isinstance(hx, (tuple, list)) and len(hx) == 2 else (hx,)
            if len(states) != (2 if is_lstm else 1):
                return None
            for s, shape in zip(states, (h_shape, (self.num_layers * D, B, self.hidden_size))):
                if not isinstance(s, Tensor) or s.shape != shape or s.dtype != dtype or s.device != device:
                    return None
        if not _params_match(zip(self._flat_weights_names, weights), device, dtype, self._param_shapes()):
            return None
        if functional.implementation_for(device, self.mode) is not functional.rnn:
            return None
        if states is None:
            h0 = input.new_zeros(h_shape)
            return (h0, input.new_zeros(self.num_layers * D, B, self.hidden_size)) if is_lstm else h0
        return states if is_lstm else states[0]

    def forward(self, input, hx=None):
        weights = self._weights()
        states = self._plain_call(input, hx, weights)
        if states is not None:
            if self.num_layers == 1 and not self.bidirectional and self.proj_size == 0 and not self.batch_first:
                served = self._one_direction_call(input, states, weights)
                if served is not None:
                    return served
            return functional.rnn(self.mode, input, states, weights, self.bias, self.num_layers, self.dropout,
                                  self.training, self.bidirectional, self.batch_first, None, self.proj_size > 0)
        return self._checked_forward(input, hx, weights)

    def _one_direction_call(self, input, states, weights):
        """A plain call of one layer and one direction that needs a gradient, as one autograd node (csrc/fastrnn.cpp
        one_direction_layer): the results, or None when no gradient is needed (the _no_grad op then serves it)."""
        h0, c0 = states if self.mode == "LSTM" else (states, None)
        if not functional.needs_gradient(input, h0, c0, weights):
            return None
        saved = functional.torch_nn_saves_output_and_biases(self.mode, input, False, False)
        b_ih, b_hh = (weights[2], weights[3]) if self.bias else (None, None)
        return functional.one_direction_layer(_CELL_KIND[self.mode], input, h0, c0, weights[0], weights[1],
                                              b_ih, b_hh, saved, saved)

    def _checked_forward(self, input, hx, weights):
        # torch.nn's checks, in its order (nn.RNN/LSTM/GRU.forward, check_forward_args, then ATen's
        # check_attributes and the sequence length), then fastrnn's own (every parameter's dtype and shape).
        name = type(self).__name__
        is_lstm = self.mode == "LSTM"
        D = 2 if self.bidirectional else 1
        P = self.proj_size if self.proj_size > 0 else self.hidden_size
        w0 = weights[0]
        autocast = torch._C._is_any_autocast_enabled()

        def check_input_dtype(data):
            if data.dtype != w0.dtype and not autocast:
                raise ValueError(
                    f"RNN input dtype ({data.dtype}) does not match weight dtype ({w0.dtype}). "
                    f"Convert input: input.to({w0.dtype}), or convert model: model.to({data.dtype})"
                )

        packed = isinstance(input, PackedSequence)
        if packed:
            data, batch_sizes, sorted_indices, unsorted_indices = input
            check_input_dtype(data)
            if data.dim() != 2:
                raise RuntimeError(f"input must have 2 dimensions, got {data.dim()} ({name}: PackedSequence.data must "
                                   "be [sum(batch_sizes), features])")
            _check_batch_sizes(batch_sizes, data)
            B = int(batch_sizes[0])
            _check_permutation("sorted_indices", sorted_indices, B)
            _check_permutation("unsorted_indices", unsorted_indices, B)
            is_batched = True
        else:
            if not isinstance(input, Tensor):
                raise _no_dim(input, f"{name}: input must be a Tensor or PackedSequence")
            if input.dim() not in (2, 3):
                raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D"
                                 + (" tensor instead" if name == "RNN" else " instead"))
            is_batched = input.dim() == 3
            batch_dim = 0 if self.batch_first else 1
            data = input if is_batched else input.unsqueeze(batch_dim)
            batch_sizes = sorted_indices = unsorted_indices = None
            B = data.size(batch_dim)

        h_shape = (self.num_layers * D, B, P)
        c_shape = (self.num_layers * D, B, self.hidden_size)
        given = None  # the states as given, and their names
        if hx is not None:
            if is_lstm:
                try:
                    given = (hx[0], hx[1])
                except IndexError as e:
                    raise IndexError(f"{e} ({name}: hx must be a tuple (h_0, c_0))") from e
            else:
                given = (hx,)
            for s in given:
                if not isinstance(s, Tensor):
                    raise _no_dim(s, f"{name}: hx must be " + ("a tuple of two Tensors" if is_lstm else "a Tensor"))
            want_dim = 3 if is_batched else 2
            if not packed and any(s.dim() != want_dim for s in given):  # (packed: the size check says it)
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                if is_lstm:
                    raise RuntimeError(f"For {kind} input, hx and cx should also be {want_dim}-D but got "
                                       f"({given[0].dim()}-D, {given[1].dim()}-D) tensors")
                raise RuntimeError(f"For {kind} input, hx should also be {want_dim}-D but got {given[0].dim()}-D "
                                   "tensor")
        if not packed:
            check_input_dtype(data)
        if data.size(-1) != self.input_size:
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got {data.size(-1)}"
            )
        names = ("hx[0]", "hx[1]") if is_lstm else ("hx",)
        if given is not None:
            for i, (what, s, expected) in enumerate(zip(names, given, (h_shape, c_shape))):
                shape = tuple(s.shape) if is_batched else (s.size(0), 1, *s.shape[1:])  # torch.nn's unsqueeze(1)
                if shape != expected:
                    label = f"hidden[{i}] size" if is_lstm else "hidden size"
                    detail = "" if is_batched else (f" ({name}: {what} must be {expected[::2]} for unbatched input, "
                                                    f"got {tuple(s.shape)})")
                    raise RuntimeError(f"Expected {label} {expected}, got {list(shape)}{detail}")
            if is_lstm and len(hx) != 2:
                raise RuntimeError(f"lstm expects two hidden states ({name}: hx must be a tuple (h_0, c_0), got "
                                   f"{len(hx)} tensors)")
        named_states = list(zip(names, given)) if given is not None else []
        named_params = list(zip(self._flat_weights_names, weights))
        shapes = self._param_shapes()
        device = data.device
        checked = () if _params_match(named_params, device, None if autocast else data.dtype, shapes) else (
            named_params)
        _check_same(name, "device", device, named_states, checked)
        if not packed and data.size(1 - batch_dim) == 0:
            raise RuntimeError(f"Expected sequence length to be larger than 0 in RNN ({name}: input shape "
                               f"{tuple(input.shape)} has no time steps)")
        if not autocast:  # (autocast casts; the states are checked below, after the casts)
            _check_same(name, "dtype", data.dtype, named_states, checked)
        _check_param_shapes(name, checked, shapes)

        impl = functional.implementation_for(device, self.mode)
        # torch's own op (implementation_for says when) takes what torch.nn gives it, autocast doing its casts.
        cast_for_autocast = autocast and impl is not functional.torch_nn_rnn
        dtype = (functional.autocast_dtype(self.mode, False, device, data.dtype) if autocast else None) or (
            w0.dtype if cast_for_autocast else data.dtype)
        if cast_for_autocast:
            data = data.to(dtype)
            if dtype != w0.dtype:  # under autocast: torch.nn casts its weights (and states) too
                weights = [w.to(dtype) for w in weights]

        if hx is None:
            h0 = data.new_zeros(h_shape)
            hx = (h0, data.new_zeros(c_shape)) if is_lstm else h0
        else:
            states = given
            if cast_for_autocast:
                states = tuple(s.to(dtype) if s.is_floating_point() else s for s in states)
            if autocast:
                _check_same(name, "dtype", dtype, list(zip(names, states)), ())
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

def _check_cell_weight_rows(w_ih: Tensor, w_hh: Tensor, G: int, hidden: int) -> None:
    for what, w in (("weight_ih", w_ih), ("weight_hh", w_hh)):
        if w.dim() >= 1 and w.size(0) != G * hidden:
            raise RuntimeError(f"{what} first dim must be {G} * hidden_size = {G * hidden}, but got {w.size(0)}")


def _raise_cell_state_error(name: str, what: str, i: int, as_given: Tensor, s: Tensor, x: Tensor, hidden: int,
                            hidden_size: int, is_batched: bool) -> None:
    """ATen's check_rnn_cell_forward_hidden for state i (`s`: as torch.nn's op sees it, unsqueezed when the input
    is unbatched), in its order; then fastrnn's own: a state of another rank, which torch.nn broadcasts."""
    expected = (x.size(0), hidden_size) if is_batched else (hidden_size,)
    detail = f" ({name}: {what} must have shape {expected}, got {tuple(as_given.shape)})"
    if x.size(0) != s.size(0):
        raise RuntimeError(f"Input batch size {x.size(0)} doesn't match hidden{i} batch size {s.size(0)}" + detail)
    if s.dim() < 2:
        raise IndexError("Dimension out of range (expected to be in range of [-1, 0], but got 1)" + detail)
    if s.size(1) != hidden:
        raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {s.size(1)}, expected {hidden}" + detail)
    raise RuntimeError(f"{name}: {what} must have shape {expected}, got {tuple(as_given.shape)}")


_CELL_PARAM_SHAPES: dict[tuple, dict] = {}
_CELL_WEIGHT_NAMES = {True: ("weight_ih", "weight_hh", "bias_ih", "bias_hh"), False: ("weight_ih", "weight_hh")}


def _cell_param_shapes(G: int, input_size: int, hidden_size: int) -> dict:
    key = (G, input_size, hidden_size)
    shapes = _CELL_PARAM_SHAPES.get(key)
    if shapes is None:
        GH = G * hidden_size
        shapes = _CELL_PARAM_SHAPES[key] = {"weight_ih": (GH, input_size), "weight_hh": (GH, hidden_size),
                                            "bias_ih": (GH,), "bias_hh": (GH,)}
    return shapes


# The kind of each mode as csrc/fastrnn.cpp numbers it (CellKind), for functional.one_direction_layer and
# functional.plain_cell; an RNNCell's by its nonlinearity (another nonlinearity: -1, not a plain call).
_CELL_KIND = {"LSTM": 0, "GRU": 1, "RNN_TANH": 2, "RNN_RELU": 3}
_PLAIN_LSTM_CELL, _PLAIN_GRU_CELL = _CELL_KIND["LSTM"], _CELL_KIND["GRU"]
_PLAIN_RNN_CELL = {"tanh": _CELL_KIND["RNN_TANH"], "relu": _CELL_KIND["RNN_RELU"]}


class _CellBase(nn.RNNCellBase):
    _mode = ""
    _gates = 1

    def __prepare_scriptable__(self) -> nn.Module:
        return _prepare_scriptable(self)

    def _plain_call(self, input, states: tuple, n_states: int):
        """(states, weights) to run a common call with (a batched tensor, n_states states each absent or of the
        right shape, dtype and device, every parameter as the module's sizes say, no autocast, the kernels serving
        it), checked in a few operations; None for any other call, which _prepare's ordered checks then raise
        torch.nn's error for, or serve. (The ordered checks cost a cell step ~15 us.)"""
        if not isinstance(input, Tensor) or input.dim() != 2 or len(states) != n_states or (
                torch._C._is_any_autocast_enabled()):
            return None
        B, H = input.shape[0], self.hidden_size
        device, dtype = input.device, input.dtype
        if input.shape[1] != self.input_size:
            return None
        for s in states:
            if s is not None and (not isinstance(s, Tensor) or s.shape != (B, H) or s.dtype != dtype
                                  or s.device != device):
                return None
        names = _CELL_WEIGHT_NAMES[self.bias]
        weights = [_attribute(self, n) for n in names]
        if not _params_match(zip(names, weights), device, dtype, _cell_param_shapes(self._gates, self.input_size, H)):
            return None
        if functional.implementation_for(device, self._mode, is_cell=True) is not functional.rnn:
            return None
        return [s if s is not None else input.new_zeros(B, H) for s in states], weights

    def _prepare(self, input: Tensor, states: tuple, n_states: int):
        # torch.nn's checks, in its order: the ranks (nn.RNNCell/LSTMCell/GRUCell.forward), then those of
        # ATen's cell op (check_rnn_cell_forward_input/_hidden, the weights' first dims, where each cell checks
        # them), then devices and dtypes (where torch.nn fails inside its matmuls, or runs on), then fastrnn's own.
        name = type(self).__name__
        if not isinstance(input, Tensor):
            raise _no_dim(input, f"{name}: input must be a Tensor")
        if input.dim() not in (1, 2):
            raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
        names = ("hx",) if n_states == 1 else ("hx[0]", "hx[1]") if len(states) == 2 else tuple(
            f"hx[{i}]" for i in range(len(states)))
        for i, s in enumerate(states):
            if s is not None and not isinstance(s, Tensor):
                raise _no_dim(s, f"{name}: {names[i]} must be a Tensor")
            if s is not None and s.dim() not in (1, 2):
                what = f"hx[{i}]" if n_states == 2 else "hidden"
                raise ValueError(f"{name}: Expected {what} to be 1D or 2D, got {s.dim()}D instead")
        is_batched = input.dim() == 2
        if len(states) != n_states:  # (LSTMCell: hx not a pair)
            detail = f" ({name}: hx must be a tuple (h_0, c_0), got {len(states)} tensors)"
            if not is_batched and len(states) < 2:
                raise IndexError("tuple index out of range" + detail)
            raise RuntimeError("lstm_cell expects two hidden states" + detail)
        x = input if is_batched else input.unsqueeze(0)
        w_ih, w_hh = _attribute(self, "weight_ih"), _attribute(self, "weight_hh")
        G = self._gates
        hidden = w_hh.size(1) if w_hh.dim() == 2 else self.hidden_size  # torch.nn's ops read both from the weights
        if G == 1:  # (each of torch's cell ops checks its weights' rows at its own point)
            _check_cell_weight_rows(w_ih, w_hh, G, hidden)
        in_size = w_ih.size(1) if w_ih.dim() == 2 else self.input_size
        if x.size(1) != in_size:
            raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected {in_size}")
        if G == 4:
            _check_cell_weight_rows(w_ih, w_hh, G, hidden)
        # The states as torch.nn's ops see them: unsqueezed when the input is unbatched.
        given = [None if s is None else (s if is_batched else s.unsqueeze(0)) for s in states]
        for i, s in enumerate(given):
            if s is not None and (s.dim() != 2 or s.size(0) != x.size(0) or s.size(1) != hidden):
                _raise_cell_state_error(name, names[i], i, states[i], s, x, hidden, self.hidden_size, is_batched)
        if G == 3:
            _check_cell_weight_rows(w_ih, w_hh, G, hidden)
        named_states = [(what, s) for what, s in zip(names, given) if s is not None]
        named_params = [("weight_ih", w_ih), ("weight_hh", w_hh)]
        if self.bias:
            named_params += [("bias_ih", _attribute(self, "bias_ih")), ("bias_hh", _attribute(self, "bias_hh"))]
        autocast = torch._C._is_any_autocast_enabled()
        shapes = _cell_param_shapes(G, self.input_size, self.hidden_size)
        checked = () if _params_match(named_params, x.device, None if autocast else x.dtype, shapes) else named_params
        _check_same(name, "device", x.device, named_states, checked)
        if not autocast:  # (autocast casts; the states are checked below, after the casts)
            if x.dtype != w_ih.dtype:
                raise RuntimeError(_matmul_dtype_message(x.dtype, w_ih.dtype, self.bias) + f" ({name}: input dtype "
                                   f"({x.dtype}) does not match weight dtype ({w_ih.dtype}), that of weight_ih)")
            for what, s in named_states[:1]:  # the hidden state h: torch.nn's matmul h @ weight_hh.T says so
                if s.dtype != x.dtype:
                    raise RuntimeError(_matmul_dtype_message(s.dtype, w_hh.dtype, self.bias) + f" ({name}: {what} "
                                       f"has dtype {s.dtype}, expected {x.dtype}, the input's)")
            _check_same(name, "dtype", x.dtype, named_states, checked)
        _check_param_shapes(name, checked, shapes)
        w = w_ih
        impl = functional.implementation_for(x.device, self._mode, is_cell=True)
        # torch's own cell op (implementation_for says when) takes what torch.nn gives it, autocast casting.
        cast_for_autocast = impl is not functional.torch_nn_rnn and torch._C._is_any_autocast_enabled()
        if cast_for_autocast:
            x = x.to(functional.autocast_dtype(self._mode, True, x.device, x.dtype) or w.dtype)
        B = x.size(0)
        out = []
        for i, s in enumerate(given):
            if s is None:
                s = x.new_zeros(B, self.hidden_size)
            else:
                if cast_for_autocast and s.is_floating_point():
                    s = s.to(x.dtype)  # as torch.nn's cells under autocast
                if autocast:
                    _check_same(name, "dtype", x.dtype, [(names[i], s)], ())
            out.append(s)
        return x, out, is_batched, impl, [t for _, t in named_params]

    def _run(self, x: Tensor, states: list, impl, weights: list):
        if impl is functional.torch_nn_rnn:
            return functional.torch_nn_cell(self._mode, x, states, weights)
        autocast = torch._C._is_any_autocast_enabled()
        if autocast:
            weights = [w.to(x.dtype) for w in weights]  # the dtype autocast chose (_prepare cast x to it)
        if impl is functional.rnn:
            if autocast:
                return functional.run_without_autocast(functional.cell_step, self._mode, x, states, weights)
            return functional.cell_step(self._mode, x, states, weights)
        hx = (states[0].unsqueeze(0), states[1].unsqueeze(0)) if len(states) == 2 else states[0].unsqueeze(0)
        output, hidden = functional.run_without_autocast(impl, self._mode, x.unsqueeze(0), hx, weights, self.bias, 1,
                                                         0.0, False, False, False)
        if len(states) == 2:
            return tuple(h[0] for h in hidden)
        return output[0] if self._mode.startswith("RNN") else hidden[0]


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
        if functional.plain_calls_allowed():
            p = self._parameters
            h = functional.plain_cell(_PLAIN_RNN_CELL.get(self.nonlinearity, -1), input, hx, None, p.get("weight_ih"),
                                      p.get("weight_hh"), p.get("bias_ih"), p.get("bias_hh"), self.bias,
                                      self.input_size, self.hidden_size)
            if h is not None:
                return h
        plain = self._plain_call(input, (hx,), 1)
        if plain is not None:
            return functional.cell_step(self._mode, input, *plain)
        x, states, is_batched, impl, weights = self._prepare(input, (hx,), 1)
        h = self._run(x, states, impl, weights)
        return h if is_batched else h.squeeze(0)


class LSTMCell(_CellBase):
    """Twin of torch.nn.LSTMCell."""

    _mode = "LSTM"
    _gates = 4

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=4, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        if functional.plain_calls_allowed() and (hx is None or (type(hx) is tuple and len(hx) == 2)):
            p = self._parameters
            h0, c0 = (None, None) if hx is None else hx
            out = functional.plain_cell(_PLAIN_LSTM_CELL, input, h0, c0, p.get("weight_ih"),
                                        p.get("weight_hh"), p.get("bias_ih"), p.get("bias_hh"), self.bias,
                                        self.input_size, self.hidden_size)
            if out is not None:
                return out
        given = (None, None) if hx is None else tuple(hx)
        plain = self._plain_call(input, given, 2)
        if plain is not None:
            return functional.cell_step(self._mode, input, *plain)
        x, states, is_batched, impl, weights = self._prepare(input, given, 2)
        h, c = self._run(x, states, impl, weights)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_CellBase):
    """Twin of torch.nn.GRUCell."""

    _mode = "GRU"
    _gates = 3

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device, dtype=dtype)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        if functional.plain_calls_allowed():
            p = self._parameters
            h = functional.plain_cell(_PLAIN_GRU_CELL, input, hx, None, p.get("weight_ih"), p.get("weight_hh"),
                                      p.get("bias_ih"), p.get("bias_hh"), self.bias, self.input_size, self.hidden_size)
            if h is not None:
                return h
        plain = self._plain_call(input, (hx,), 1)
        if plain is not None:
            return functional.cell_step(self._mode, input, *plain)
        x, states, is_batched, impl, weights = self._prepare(input, (hx,), 1)
        h = self._run(x, states, impl, weights)
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
                          f"layers (here {type(module).__name__}), on the same Parameters: the scripted model runs "
                          "torch's kernels, not fastrnn's. torch's __prepare_scriptable__ protocol also puts those "
                          "torch.nn modules into the model given to torch.jit.script; call fastrnn.convert(model) "
                          "after scripting to run fastrnn's kernels in Python again.")
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
