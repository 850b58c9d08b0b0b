"""A readable pure-PyTorch implementation of torch.nn's recurrent layers.

This is the oracle the kernels are tested against, and the path fastrnn runs when its
compiled kernels cannot (it then warns once). It follows torch.nn exactly: gate order
(LSTM i, f, g, o; GRU r, z, n with n = tanh(W_in x + b_in + r * (W_hn h + b_hn))),
proj_size, layers, directions, dropout between layers, and PackedSequence semantics:
a sequence stops updating its state after its length, and the reverse direction starts
each sequence at its own last element.

`rnn()` has the contract of torch._VF.lstm/gru/rnn_tanh/rnn_relu, shared with
fastrnn.functional.rnn(): see there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def lstm_cell(x, h, c, w_ih, w_hh, b_ih=None, b_hh=None, w_hr=None):
    """One LSTM step. x [B, I], h [B, P], c [B, H] -> (h [B, P], c [B, H])."""
    gates = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    i, f, g, o = gates.chunk(4, dim=1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(c)
    if w_hr is not None:
        h = F.linear(h, w_hr)
    return h, c


def gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """One GRU step. x [B, I], h [B, H] -> h [B, H]."""
    x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, dim=1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=1)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


def rnn_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh"):
    """One Elman RNN step. x [B, I], h [B, H] -> h [B, H]."""
    pre = F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def _step(mode, x, state, w):
    """One step of `mode` on the active rows. state and the result are tuples (h,) or (h, c)."""
    w_ih, w_hh, b_ih, b_hh, w_hr = w
    if mode == "LSTM":
        return lstm_cell(x, state[0], state[1], w_ih, w_hh, b_ih, b_hh, w_hr)
    if mode == "GRU":
        return (gru_cell(x, state[0], w_ih, w_hh, b_ih, b_hh),)
    return (rnn_cell(x, state[0], w_ih, w_hh, b_ih, b_hh, "tanh" if mode == "RNN_TANH" else "relu"),)


def _direction(mode, steps, batch_sizes, state, w, reverse):
    """Runs one direction of one layer.

    steps: list over t of [batch_sizes[t], I] inputs (batch rows sorted by decreasing length).
    state: tuple of [B, *] initial states. Returns (outputs per t, final state tuple).
    """
    outputs = [None] * len(steps)
    order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))
    for t in order:
        n = batch_sizes[t]
        new = _step(mode, steps[t], tuple(s[:n] for s in state), w)
        outputs[t] = new[0]
        # Rows past n are finished (forward) or not yet started (reverse): they keep their state.
        state = tuple(torch.cat([s_new, s[n:]], dim=0) for s_new, s in zip(new, state))
    return outputs, state


def layer_weights(weights, bias, proj, num_layers, num_directions):
    """Splits torch.nn's flat weight list into (w_ih, w_hh, b_ih, b_hh, w_hr) per layer and direction."""
    per = 2 + (2 if bias else 0) + (1 if proj else 0)
    if len(weights) != per * num_layers * num_directions:
        raise ValueError(
            f"expected {per * num_layers * num_directions} weight tensors "
            f"({per} per layer and direction), got {len(weights)}"
        )
    out = []
    for layer in range(num_layers):
        dirs = []
        for d in range(num_directions):
            chunk = list(weights[(layer * num_directions + d) * per:(layer * num_directions + d + 1) * per])
            w_ih, w_hh = chunk[0], chunk[1]
            b_ih, b_hh = (chunk[2], chunk[3]) if bias else (None, None)
            w_hr = chunk[-1] if proj else None
            dirs.append((w_ih, w_hh, b_ih, b_hh, w_hr))
        out.append(dirs)
    return out


def rnn(mode: str, input: Tensor, hx, weights, bias: bool, num_layers: int, dropout: float, training: bool,
        bidirectional: bool, batch_first: bool, batch_sizes: Tensor | None = None, proj: bool = False):
    """The whole multi-layer recurrence, with the contract of torch._VF.lstm and friends.

    input: padded [T, B, I] ([B, T, I] if batch_first), or packed data [N, I] when batch_sizes
    is given (then batch_first is ignored). hx: Tensor [L*D, B, P], or (h [L*D, B, P],
    c [L*D, B, H]) for LSTM, in the sorted batch order. weights: torch.nn's flat list.
    Returns (output, h_n) or (output, (h_n, c_n)); output is [T, B, D*P] (batch_first: [B, T, D*P])
    or packed data [N, D*P].
    """
    num_directions = 2 if bidirectional else 1
    is_lstm = mode == "LSTM"
    h0, c0 = (hx[0], hx[1]) if is_lstm else (hx, None)
    if batch_sizes is not None:
        sizes = [int(b) for b in batch_sizes]
        steps = list(torch.split(input, sizes, dim=0))
    else:
        x = input.transpose(0, 1) if batch_first else input
        sizes = [x.size(1)] * x.size(0)
        steps = list(x.unbind(0))
    per_layer = layer_weights(weights, bias, proj, num_layers, num_directions)
    h_n, c_n = [], []
    for layer, dirs in enumerate(per_layer):
        outs = []
        for d, w in enumerate(dirs):
            k = layer * num_directions + d
            state = (h0[k], c0[k]) if is_lstm else (h0[k],)
            out, state = _direction(mode, steps, sizes, state, w, reverse=d == 1)
            outs.append(out)
            h_n.append(state[0])
            if is_lstm:
                c_n.append(state[1])
        steps = [torch.cat(per_t, dim=1) for per_t in zip(*outs)]
        if dropout > 0 and training and layer < num_layers - 1:
            # torch.nn draws one mask over the whole layer output (packed data or [T, B, D*P]).
            whole = torch.cat(steps, 0) if batch_sizes is not None else torch.stack(steps, 0)
            whole = F.dropout(whole, dropout, True)
            steps = list(torch.split(whole, sizes, 0)) if batch_sizes is not None else list(whole.unbind(0))
    if batch_sizes is not None:
        output = torch.cat(steps, 0)
    else:
        output = torch.stack(steps, 0)
        if batch_first:
            output = output.transpose(0, 1)
    hidden = torch.stack(h_n, 0)
    if is_lstm:
        return output, (hidden, torch.stack(c_n, 0))
    return output, hidden


_CELL_MODES = {"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN_TANH", "rnn_relu": "RNN_RELU"}


def layer(cell: str, x, w_ih, b_ih, h0, c0, w_hh, b_hh, w_hr, lengths):
    """One layer op (torch.ops.fastrnn.<cell>_layer) in plain differentiable PyTorch, without the workspace.

    cell: "lstm", "gru", "rnn_tanh" or "rnn_relu". x [T, B, I]; w_ih [D, G*H, I]; b_ih, b_hh [D, G*H] or None;
    h0 [D, B, P]; c0 [D, B, H] (LSTM; else None); w_hh [D, G*H, P]; w_hr [D, P, H] or None; lengths [B] int64
    in any order, or None (every sequence has length T). Returns y [T, B, D*P] (zero past each length),
    hn [D, B, P] and cn [D, B, H] (None without a cell state). Masks instead of sorted row counts, so that
    lengths need no order: the op's backward differentiates this when a graph of the gradient is asked for.
    """
    mode = _CELL_MODES[cell]
    T = x.size(0)
    active = None if lengths is None else lengths.to(x.device).view(1, -1, 1) > torch.arange(
        T, device=x.device).view(-1, 1, 1)  # [T, B, 1]
    ys, hns, cns = [], [], []
    for d in range(w_ih.size(0)):
        w = (w_ih[d], w_hh[d], None if b_ih is None else b_ih[d], None if b_hh is None else b_hh[d],
             None if w_hr is None else w_hr[d])
        state = (h0[d], c0[d]) if c0 is not None else (h0[d],)
        outputs = [None] * T
        for t in (range(T - 1, -1, -1) if d == 1 else range(T)):
            new = _step(mode, x[t], state, w)
            if active is not None:  # a sequence past its length (or, in reverse, not yet started) keeps its state
                new = tuple(torch.where(active[t], n, s) for n, s in zip(new, state))
                outputs[t] = torch.where(active[t], new[0], 0.0)
            else:
                outputs[t] = new[0]
            state = new
        ys.append(torch.stack(outputs, 0))
        hns.append(state[0])
        if c0 is not None:
            cns.append(state[1])
    return torch.cat(ys, 2), torch.stack(hns, 0), torch.stack(cns, 0) if c0 is not None else None
