"""The multi-layer, bidirectional, packed logic around the per-layer kernels.

`rnn()` has the contract of torch._VF.lstm/gru/rnn_tanh/rnn_relu (and of
fastrnn.reference.rnn): it takes torch.nn's flat weight list, runs each layer as one op
call covering both directions, applies dropout between layers exactly as torch.nn does on
the CPU (one F.dropout over the whole layer output, packed or padded, so seeded runs draw
the same masks), and returns torch.nn's outputs.

Which implementation runs is decided in one place, `implementation_for()`: the compiled
kernels when they exist for the input's device, otherwise the reference, with a one-time
warning saying why.
"""

from __future__ import annotations

import sys
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from . import reference

_OPS = {"LSTM": "lstm_layer", "GRU": "gru_layer", "RNN_TANH": "rnn_tanh_layer", "RNN_RELU": "rnn_relu_layer"}


def layer_op(mode: str, need_grad: bool):
    """The op of one layer: *_layer when a gradient is needed (its autograd formula is fastrnn/_ops.py's), else
    its twin *_layer_no_grad (the same kernels, without Python's autograd dispatch: ~11 us a call)."""
    return getattr(torch.ops.fastrnn, _OPS[mode] if need_grad else _OPS[mode] + "_no_grad")

# Set by fastrnn/__init__.py: None when the extension loaded, else the import error.
extension_error: Exception | None = None
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


_DISPATCH_KEYS = {"meta": "Meta", "privateuseone": "PrivateUse1"}


_kernels_by_device_type: dict[str, bool] = {}


@torch.compiler.assume_constant_result  # a fixed fact of this process; lets torch.compile(fullgraph=True) through
def kernels_available(device: torch.device) -> bool:
    if extension_error is not None:
        return False
    # Cached: the dispatcher query costs ~10 us, a tenth of a small layer's Python overhead.
    found = _kernels_by_device_type.get(device.type)
    if found is None:
        # The dispatch key's own spelling: "CPU", "CUDA", but "Meta" (device.type.upper() fails for it).
        # A plain dict, not torch._C._dispatch_key_for_device, which torch.compile cannot trace.
        key = _DISPATCH_KEYS.get(device.type, device.type.upper())
        found = torch._C._dispatch_has_kernel_for_dispatch_key("fastrnn::lstm_layer", key)
        _kernels_by_device_type[device.type] = found
    return found


def _transform_in_use() -> str | None:
    """The autograd transform fastrnn's kernels cannot serve that is active now, or None.

    The ops have a first-order reverse-mode formula only. Under forward-mode AD they would give zero
    tangents, and functorch's grad/vjp/jacrev/hessian refuse them; the reference (plain differentiable
    PyTorch) serves all of these, per-sample gradients (vmap of grad) included.
    """
    if torch.compiler.is_compiling():  # torch.compile/export trace the ops themselves (and cannot trace this)
        return None
    if torch._C._functorch.peek_interpreter_stack() is not None:
        return "a torch.func transform (grad, vjp, jvp, jacrev, jacfwd, hessian, vmap)"
    if torch.autograd.forward_ad._current_level >= 0:
        return "forward-mode AD (torch.autograd.forward_ad)"
    return None


def _onnx_exporting() -> bool:
    """torch.onnx.is_in_onnx_export() without its cost: it imports two modules on every call (~8 us, a tenth of
    a small layer call's Python). Those modules are imported by any export before it starts, so while they are
    absent no export is running. tests/test_onnx.py fails if torch moves them."""
    flags = sys.modules.get("torch.onnx._internal.exporter._flags")
    if flags is not None and flags._is_onnx_exporting:
        return True
    globals_module = sys.modules.get("torch.onnx._internal.torchscript_exporter._globals")
    return globals_module is not None and globals_module.GLOBALS.in_onnx_export


def _tracing() -> bool:
    """torch.jit.trace or an ONNX export (either exporter) is recording this call."""
    if torch.compiler.is_dynamo_compiling():  # torch.compile traces the ops themselves
        return False
    return _onnx_exporting() or torch.jit.is_tracing()


def plain_calls_allowed() -> bool:
    """Nothing records, transforms or autocasts the call, and the extension is loaded: what implementation_for
    asks besides the device, in a few cheap checks (~1.2 us against its ~4.5, which a small call pays). False: ask
    implementation_for. Under torch.compile always False (implementation_for's own checks are what it traces)."""
    return (not torch.compiler.is_compiling() and extension_error is None and not torch._C._is_any_autocast_enabled()
            and not torch._C._is_tracing() and torch._C._functorch.peek_interpreter_stack() is None
            and torch.autograd.forward_ad._current_level < 0 and not _onnx_exporting())


def _plainly_the_kernels(device: torch.device) -> bool:
    """The common case of implementation_for: plain_calls_allowed and kernels for the device."""
    return _kernels_by_device_type.get(device.type) is True and plain_calls_allowed()


# A cell module's common call in C++ (csrc/fastrnn.cpp plain_cell): the result, or None when the call is not the
# common one. Set when the extension loads.
plain_cell = None
# A one-layer, one-direction layer's plain training call as one autograd node (csrc/fastrnn.cpp
# one_direction_layer). Set when the extension loads.
one_direction_layer = None


def implementation_for(device: torch.device, mode: str = "", is_cell: bool = False):
    """The function computing the recurrence on `device`, the one place this is chosen.

    - `rnn` (the compiled kernels), the normal case;
    - `torch_nn_rnn` (torch's own ATen op, what torch.nn runs) while torch.jit.trace or torch.onnx.export
      records the call, so that the traced graph or ONNX model is torch.nn's (portable, trainable, ONNX's
      LSTM/GRU/RNN operators), and under CPU autocast for the modules torch.nn computes in mixed precision
      (GRU, LSTMCell, GRUCell: lower-precision matmuls, float32 state), so that the numbers are torch.nn's;
    - `reference.rnn` under an autograd transform the kernels cannot serve (`_transform_in_use`), or when
      there are no kernels for the device.
    Each choice other than the kernels is said once, with its reason, as a RuntimeWarning.
    """
    if _plainly_the_kernels(device):
        return rnn
    if not kernels_available(device):
        if extension_error is not None:
            _warn_once(
                "extension",
                f"fastrnn: the compiled extension could not be loaded ({extension_error}); running the much slower "
                "pure-PyTorch reference instead. Reinstall with `pip install --no-build-isolation -e .` against "
                "the torch you run.",
            )
        else:
            _warn_once(
                device.type,
                f"fastrnn: this build has no {device.type.upper()} kernels; running the much slower pure-PyTorch "
                f"reference on {device.type} instead.",
            )
        return reference.rnn
    if _tracing():
        _warn_once("tracing", "fastrnn: torch.jit.trace / torch.onnx.export is recording a fastrnn layer; it records "
                   "torch.nn's own op (aten::lstm, aten::gru, ...), so the traced or exported model is torch.nn's "
                   "and runs torch's kernels, not fastrnn's.")
        return torch_nn_rnn
    transform = _transform_in_use()
    if transform is not None:
        _warn_once(f"transform:{transform}", f"fastrnn: {transform} is active; fastrnn's kernels have a first-order "
                   "reverse-mode formula only, so this call runs fastrnn.reference (plain PyTorch: exact, slower).")
        return reference.rnn
    if device.type == "cpu" and torch.is_autocast_enabled("cpu") and (mode, is_cell) in _CPU_AUTOCAST_MIXED:
        _warn_once(f"autocast:{mode}:{is_cell}", f"fastrnn: under CPU autocast torch.nn's {_module_name(mode, is_cell)} "
                   "computes its matmuls in the autocast dtype and its state in float32; fastrnn runs torch's own op "
                   "for it there (same numbers), not its kernels.")
        return torch_nn_rnn
    return rnn


def _module_name(mode: str, is_cell: bool) -> str:
    base = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}[mode]
    return base + ("Cell" if is_cell else "")


_VF_LAYERS = {"LSTM": "lstm", "GRU": "gru", "RNN_TANH": "rnn_tanh", "RNN_RELU": "rnn_relu"}


def torch_nn_rnn(mode: str, input: Tensor, hx, weights, bias: bool, num_layers: int, dropout: float,
                 training: bool, bidirectional: bool, batch_first: bool, batch_sizes: Tensor | None = None,
                 proj: bool = False):
    """torch.nn's own computation (torch._VF.lstm and friends), with the contract of `rnn`."""
    fn = getattr(torch._VF, _VF_LAYERS[mode])
    if mode == "LSTM":
        hx = (hx[0], hx[1])
    if batch_sizes is None:
        out = fn(input, hx, weights, bias, num_layers, dropout, training, bidirectional, batch_first)
    else:
        out = fn(input, batch_sizes, hx, weights, bias, num_layers, dropout, training, bidirectional)
    if mode == "LSTM":
        return out[0], (out[1], out[2])
    return out[0], out[1]


def torch_nn_cell(mode: str, x: Tensor, states: list, weights: list):
    """torch.nn's cell op (torch._VF.lstm_cell and friends): x [B, I], states [B, H] -> h, or (h, c) for LSTM."""
    fn = getattr(torch._VF, _VF_LAYERS[mode] + "_cell")
    w_ih, w_hh, *biases = weights
    b_ih, b_hh = biases if biases else (None, None)
    if mode == "LSTM":
        return fn(x, (states[0], states[1]), w_ih, w_hh, b_ih, b_hh)
    return fn(x, states[0], w_ih, w_hh, b_ih, b_hh)


# What torch.nn computes in under CPU autocast, measured with torch 2.14 (and the dtype it returns):
# wholly in the autocast dtype for LSTM, RNN and RNNCell; for GRU, LSTMCell and GRUCell its matmuls in the
# autocast dtype and its state in float32 (float32 out), which `torch_nn_rnn`/`torch_nn_cell` reproduce.
_CPU_AUTOCAST_LOWER_PRECISION = {("LSTM", False), ("RNN_TANH", False), ("RNN_RELU", False), ("RNN_TANH", True),
                                 ("RNN_RELU", True)}
_CPU_AUTOCAST_MIXED = {("GRU", False), ("LSTM", True), ("GRU", True)}


def autocast_dtype(mode: str, is_cell: bool, device: torch.device, input_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype a layer (or cell) of `mode` computes in under autocast on `device`, as torch.nn's; None when
    autocast is off there (or leaves this input alone)."""
    if device.type == "cpu":
        if not torch.is_autocast_enabled("cpu"):
            return None
        if (mode, is_cell) in _CPU_AUTOCAST_LOWER_PRECISION:
            return torch.get_autocast_dtype("cpu")
        return torch.float32
    if device.type == "cuda":
        if not torch.is_autocast_enabled("cuda") or input_dtype == torch.float64:  # autocast leaves float64 alone
            return None
        if not is_cell and torch.backends.cudnn.enabled and torch.backends.cudnn.is_available():
            # torch.nn's layers run cuDNN's RNN there, whose autocast wrapper casts to float16 whatever the
            # autocast dtype (aten/src/ATen/cudnn/AutocastRNN.cpp, kHalf). Not yet checked on a GPU.
            return torch.float16
        # The cells (lstm_cell, gru_cell, rnn_*_cell) and layers without cuDNN: the autocast dtype.
        return torch.get_autocast_dtype("cuda")
    return None


def run_without_autocast(impl, *args):
    """impl(*args) with autocast off, for arguments already cast to the dtype autocast chose (so that the
    projection's F.linear in the reference, or anything else inside, is not cast a second time)."""
    device_type = args[1].device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            return impl(*args)
    return impl(*args)


def lengths_from_batch_sizes(batch_sizes: Tensor) -> Tensor:
    """[T] non-increasing batch sizes -> [B] int64 lengths on the CPU (sorted decreasingly)."""
    B = int(batch_sizes[0])
    return (batch_sizes.view(-1, 1) > torch.arange(B).view(1, -1)).sum(0)


def _packed_rows(batch_sizes: Tensor, device) -> Tensor:
    """Row indices of a packed sequence's elements in the padded [T*B] layout (time-major)."""
    T, B = batch_sizes.numel(), int(batch_sizes[0])
    mask = torch.arange(B).view(1, -1) < batch_sizes.view(-1, 1)
    return mask.view(T * B).nonzero().view(-1).to(device)


def _stack(ts):
    return ts[0].unsqueeze(0) if len(ts) == 1 else torch.stack(ts, 0)


class _SavedForVersionCheck(torch.autograd.Function):
    """The first n tensors, unchanged (as views), with the others saved for backward, which reads them: an
    in-place edit of one of those between forward and backward raises autograd's error ("...modified by an
    inplace operation"), as torch.nn's does for the tensors it saves. For those that torch.nn saves and
    fastrnn's ops see only as copies: the weights of two directions (stacked), a packed input's data, and
    the biases where torch.nn's oneDNN LSTM saves them (fastrnn's ops save no bias: fastrnn/_ops.py)."""

    @staticmethod
    def forward(ctx, n, *tensors):
        ctx.save_for_backward(*tensors[n:])
        ctx.n_saved = len(tensors) - n
        return tuple(t.view_as(t) for t in tensors[:n])

    @staticmethod
    def backward(ctx, *grads):
        ctx.saved_tensors  # the version check
        return (None, *grads, *([None] * ctx.n_saved))


def _with_version_check(values: list, originals: list) -> list:
    if not originals:
        return values
    return list(_SavedForVersionCheck.apply(len(values), *values, *originals))


def torch_nn_saves_output_and_biases(mode: str, input: Tensor, proj: bool, packed: bool) -> bool:
    """Whether torch.nn's layer saves its biases and its output for backward, as measured (torch 2.14, CPU):
    its oneDNN LSTM does (float32 on the CPU with oneDNN enabled, no projection, padded input); every other
    path is composite ATen, which saves neither (the input, the states and the weights it saves everywhere).
    The same in-place edits then raise in fastrnn as in torch.nn."""
    return (mode == "LSTM" and input.device.type == "cpu" and input.dtype == torch.float32 and not proj
            and not packed and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def needs_gradient(input: Tensor, h0: Tensor, c0: Tensor | None, weights) -> bool:
    """Whether a layer call records a gradient: grad mode on and any of its tensors requiring one."""
    return torch.is_grad_enabled() and (
        input.requires_grad or any(w.requires_grad for w in weights) or h0.requires_grad
        or (c0 is not None and c0.requires_grad)
    )


def rnn(mode: str, input: Tensor, hx, weights, bias: bool, num_layers: int, dropout: float, training: bool,
        bidirectional: bool, batch_first: bool, batch_sizes: Tensor | None = None, proj: bool = False, *,
        biases_saved: bool | None = None, output_saved: bool | None = None):
    """See fastrnn.reference.rnn for the contract (identical).

    What autograd's version check covers is torch.nn's: the input, the states and every weight always; the
    biases and the output where torch.nn's layer saves them (torch_nn_saves_output_and_biases; its output
    only with one direction, as two are concatenated). biases_saved and output_saved override that rule
    (the cells: torch.nn's save no bias, and its RNNCell saves its output)."""
    is_lstm = mode == "LSTM"
    D = 2 if bidirectional else 1
    h0_all, c0_all = (hx[0], hx[1]) if is_lstm else (hx, None)
    # (A small call pays ~1-2 us for every tensor method called here: none is called without need.)
    if batch_sizes is not None:
        T, B = batch_sizes.numel(), int(batch_sizes[0])
        rows = _packed_rows(batch_sizes, input.device)
        lengths = lengths_from_batch_sizes(batch_sizes)
        x = input.new_zeros(T * B, input.size(-1)).index_copy(0, rows, input).view(T, B, input.size(-1))
    else:
        # [T, B, I]. batch_first: a copy, as torch.nn's layers make (an in-place edit of the input then does not
        # reach what backward reads, tests/test_inplace.py); else the input itself (contiguous or not: the op's).
        x = input.transpose(0, 1).contiguous() if batch_first else input
        lengths = None
    need_grad = needs_gradient(input, h0_all, c0_all, weights)
    op = layer_op(mode, need_grad)
    torch_nn_saves = need_grad and torch_nn_saves_output_and_biases(mode, input, proj, batch_sizes is not None)
    saves_biases = torch_nn_saves if biases_saved is None else biases_saved
    if output_saved is None:
        output_saved = torch_nn_saves and D == 1
    h_n, c_n = [], []
    per_layer = reference.layer_weights(weights, bias, proj, num_layers, D)
    for layer, dirs in enumerate(per_layer):
        columns = list(zip(*dirs))  # w_ih, w_hh, b_ih, b_hh, w_hr: one per direction
        stacked = [_stack(ts) if ts[0] is not None else None for ts in columns]
        if need_grad:  # what torch.nn saves and the op sees only as a copy, or does not save (see above)
            checked = [i for i, ts in enumerate(columns) if ts[0] is not None
                       and (saves_biases if i in (2, 3) else D == 2)]
            values = _with_version_check([stacked[i] for i in checked], [t for i in checked for t in columns[i]])
            for i, v in zip(checked, values):
                stacked[i] = v
            if layer == 0 and batch_sizes is not None:  # (the op's x is the padded copy of the packed data)
                x = _with_version_check([x], [input])[0]
        w_ih, w_hh, b_ih, b_hh, w_hr = stacked
        h0 = h0_all if num_layers == 1 else h0_all[layer * D:(layer + 1) * D]
        if is_lstm:
            c0 = c0_all if num_layers == 1 else c0_all[layer * D:(layer + 1) * D]
            y, hn, cn, _ = op(x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths, need_grad)
            c_n.append(cn)
        else:
            y, hn, _ = op(x, w_ih, b_ih, h0, w_hh, b_hh, lengths, need_grad)
        h_n.append(hn)
        if dropout > 0 and training and layer < num_layers - 1:
            # The same layout torch.nn draws its mask on: packed data, or the [T, B, D*P] output.
            if batch_sizes is not None:
                flat = y.view(-1, y.size(-1))
                y = flat.new_zeros(flat.shape).index_copy(0, rows, F.dropout(flat.index_select(0, rows), dropout,
                                                                             True)).view(y.shape)
            else:
                y = F.dropout(y, dropout, True)
        x = y  # [T, B, D*P]
    if batch_sizes is not None:
        output = x.view(-1, x.size(-1)).index_select(0, rows)
    else:
        output = x
        if need_grad and not output_saved:  # the op saved y, this very tensor: hand out a copy
            output = output.clone()
        if batch_first:
            output = output.transpose(0, 1)
    hidden = _cat_layers(h_n)
    if is_lstm:
        return output, (hidden, _cat_layers(c_n))
    return output, hidden


_CELL_OPS = {"LSTM": "lstm_cell", "GRU": "gru_cell", "RNN_TANH": "rnn_tanh_cell", "RNN_RELU": "rnn_relu_cell"}


def cell_step(mode: str, x: Tensor, states: list, weights: list):
    """One step of a cell on the kernels: torch.ops.fastrnn.<cell>_cell (csrc/fastrnn.cpp: the layer op at T = 1,
    D = 1, the views around it in C++). x [B, I], states [h] or [h, c] ([B, H] each), weights [w_ih, w_hh] or
    [w_ih, w_hh, b_ih, b_hh]. Returns h, or (h, c) for LSTM."""
    if len(weights) == 4:
        return _cell_op(mode)(x, *states, *weights)
    return _cell_op(mode)(x, *states, weights[0], weights[1], None, None)


_cell_ops: dict = {}


def _cell_op(mode: str):
    op = _cell_ops.get(mode)
    if op is None:
        op = _cell_ops[mode] = getattr(torch.ops.fastrnn, _CELL_OPS[mode]).default
    return op


def _cat_layers(ts):
    return ts[0] if len(ts) == 1 else torch.cat(ts, 0)
