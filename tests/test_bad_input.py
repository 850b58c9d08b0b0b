"""Bad input raises the exception class torch.nn raises, with a message naming what was expected and given.

Everything is written down as tables. A row of CASES is

    (id, call, exception class, message regex, torch_nn)

where `call(lib)` builds a module from `lib` (torch.nn or fastrnn) and calls it, and `torch_nn` is
SAME when torch.nn raises the very same exception class for that call (then the row runs against
both libraries: fastrnn must match the regex, torch.nn must raise the same class), or otherwise a
string saying why torch.nn is not compared (e.g. fastrnn is deliberately stricter).

OP_CASES are direct calls of torch.ops.fastrnn.* with inconsistent arguments: each must raise a
RuntimeError naming the op, the tensor and the expected and given values (and not crash the process).
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn

SAME = "same"
STRICTER = "fastrnn is deliberately stricter: torch.nn runs this silently or fails with an unrelated error"


def x3(T=4, B=2, I=3, dtype=torch.float32):
    return torch.randn(T, B, I, dtype=dtype)


def packed(batch_sizes, rows=None, features=3, sorted_indices=None, unsorted_indices=None):
    """A hand-built PackedSequence (no validation by torch)."""
    batch_sizes = torch.tensor(batch_sizes, dtype=torch.int64)
    n = int(batch_sizes.sum()) if rows is None else rows
    return PackedSequence(torch.randn(n, features), batch_sizes, sorted_indices, unsorted_indices)


CASES = [
    # ---------------------------------------------------------------- constructor arguments
    ("ctor-gru-proj_size", lambda L: L.GRU(3, 5, proj_size=2), ValueError,
     r"proj_size argument is only supported for LSTM, not RNN or GRU", SAME),
    ("ctor-rnn-proj_size", lambda L: L.RNN(3, 5, proj_size=2), ValueError,
     r"proj_size argument is only supported for LSTM, not RNN or GRU", SAME),
    ("ctor-lstm-proj_size-eq-hidden", lambda L: L.LSTM(3, 5, proj_size=5), ValueError,
     r"proj_size has to be smaller than hidden_size, got proj_size=5 and hidden_size=5", SAME),
    ("ctor-lstm-proj_size-gt-hidden", lambda L: L.LSTM(3, 5, proj_size=7), ValueError,
     r"proj_size has to be smaller than hidden_size, got proj_size=7 and hidden_size=5", SAME),
    ("ctor-lstm-proj_size-negative", lambda L: L.LSTM(3, 5, proj_size=-1), ValueError,
     r"proj_size should be a positive integer or zero .*got -1", SAME),
    ("ctor-rnn-nonlinearity-kw", lambda L: L.RNN(3, 5, nonlinearity="sigmoid"), ValueError,
     r"Unknown nonlinearity 'sigmoid'\. Select from 'tanh' or 'relu'", SAME),
    ("ctor-rnn-nonlinearity-positional", lambda L: L.RNN(3, 5, 1, "gelu"), ValueError,
     r"Unknown nonlinearity 'gelu'\. Select from 'tanh' or 'relu'", SAME),
    ("ctor-rnncell-nonlinearity", lambda L: L.RNNCell(3, 5, nonlinearity="sigmoid"), ValueError,
     r"Unknown nonlinearity 'sigmoid'\. Select from 'tanh' or 'relu'",
     "torch.nn accepts it at construction and raises RuntimeError at the first forward; fastrnn fails early"),
    ("ctor-input_size-zero", lambda L: L.LSTM(0, 5), ValueError, r"input_size must be greater than zero, got 0", SAME),
    ("ctor-input_size-negative", lambda L: L.RNN(-2, 5), ValueError,
     r"input_size must be greater than zero, got -2", SAME),
    ("ctor-hidden_size-zero", lambda L: L.GRU(3, 0), ValueError, r"hidden_size must be greater than zero, got 0", SAME),
    ("ctor-hidden_size-negative", lambda L: L.LSTM(3, -1), ValueError,
     r"hidden_size must be greater than zero, got -1", SAME),
    ("ctor-num_layers-zero", lambda L: L.LSTM(3, 5, 0), ValueError,
     r"num_layers must be greater than zero, got 0", SAME),
    ("ctor-num_layers-negative", lambda L: L.GRU(3, 5, num_layers=-3), ValueError,
     r"num_layers must be greater than zero, got -3", SAME),
    ("ctor-dropout-negative", lambda L: L.LSTM(3, 5, 2, dropout=-0.1), ValueError,
     r"dropout should be a number in range \[0, 1\].*got -0\.1", SAME),
    ("ctor-dropout-above-one", lambda L: L.GRU(3, 5, 2, dropout=1.5), ValueError,
     r"dropout should be a number in range \[0, 1\].*got 1\.5", SAME),
    ("ctor-dropout-bool", lambda L: L.RNN(3, 5, 2, dropout=True), ValueError,
     r"dropout should be a number in range \[0, 1\].*got True", SAME),
    ("ctor-input_size-float", lambda L: L.LSTM(4.0, 5), TypeError,
     r"input_size should be of type int, got: float", SAME),
    ("ctor-hidden_size-str", lambda L: L.LSTM(4, "5"), TypeError, r"hidden_size should be of type int, got: str", SAME),
    ("ctor-gru-input_size-float", lambda L: L.GRU(4.5, 5), TypeError,
     r"input_size should be of type int, got: float", SAME),
    ("ctor-rnn-hidden_size-float", lambda L: L.RNN(4, 5.0), TypeError,
     r"hidden_size should be of type int, got: float", SAME),
    ("ctor-num_layers-float", lambda L: L.LSTM(4, 5, 2.0), TypeError, r"num_layers should be of type int, got: float",
     SAME),
    # ---------------------------------------------------------------- input rank and dtype
    ("input-1d", lambda L: L.LSTM(3, 5)(torch.randn(3)), ValueError,
     r"LSTM: Expected input to be 2D or 3D, got 1D", SAME),
    ("input-4d", lambda L: L.GRU(3, 5)(torch.randn(1, 4, 2, 3)), ValueError,
     r"GRU: Expected input to be 2D or 3D, got 4D", SAME),
    ("input-0d", lambda L: L.RNN(3, 5)(torch.tensor(1.0)), ValueError,
     r"RNN: Expected input to be 2D or 3D, got 0D", SAME),
    ("input-not-a-tensor", lambda L: L.GRU(3, 5)([[1.0, 2.0, 3.0]]), TypeError,
     r"GRU: input must be a Tensor or PackedSequence, got list", "torch.nn fails with AttributeError ('list' .dim)"),
    ("input-dtype-double-lstm", lambda L: L.LSTM(3, 5)(x3(dtype=torch.float64)), ValueError,
     r"input dtype \(torch\.float64\) does not match weight dtype \(torch\.float32\)", SAME),
    ("input-dtype-double-gru-unbatched", lambda L: L.GRU(3, 5)(torch.randn(4, 3, dtype=torch.float64)), ValueError,
     r"input dtype \(torch\.float64\) does not match weight dtype \(torch\.float32\)", SAME),
    ("input-dtype-half-rnn", lambda L: L.RNN(3, 5)(x3(dtype=torch.float16)), ValueError,
     r"input dtype \(torch\.float16\) does not match weight dtype \(torch\.float32\)", SAME),
    ("input-dtype-float-into-double", lambda L: L.LSTM(3, 5).double()(x3()), ValueError,
     r"input dtype \(torch\.float32\) does not match weight dtype \(torch\.float64\)", SAME),
    ("input-dtype-int", lambda L: L.GRU(3, 5)(x3().long()), ValueError,
     r"input dtype \(torch\.int64\) does not match weight dtype \(torch\.float32\)", SAME),
    ("input-dtype-packed", lambda L: L.LSTM(3, 5)(pack_padded_sequence(x3(dtype=torch.float64), torch.tensor([4, 2]))),
     ValueError, r"input dtype \(torch\.float64\) does not match weight dtype \(torch\.float32\)",
     "torch.nn checks the dtype of padded input only; packed input fails later, in a matmul (RuntimeError)"),
    # ---------------------------------------------------------------- feature size
    ("input-features-lstm", lambda L: L.LSTM(3, 5)(x3(I=4)), RuntimeError,
     r"LSTM: input\.size\(-1\) must be equal to input_size\. Expected 3, got 4", SAME),
    ("input-features-gru-unbatched", lambda L: L.GRU(3, 5)(torch.randn(4, 2)), RuntimeError,
     r"GRU: input\.size\(-1\) must be equal to input_size\. Expected 3, got 2", SAME),
    ("input-features-rnn-batch_first", lambda L: L.RNN(3, 5, batch_first=True)(torch.randn(2, 4, 6)), RuntimeError,
     r"RNN: input\.size\(-1\) must be equal to input_size\. Expected 3, got 6", SAME),
    ("input-features-packed", lambda L: L.GRU(3, 5)(pack_padded_sequence(x3(I=4), torch.tensor([4, 3]))), RuntimeError,
     r"GRU: input\.size\(-1\) must be equal to input_size\. Expected 3, got 4", SAME),
    # ---------------------------------------------------------------- hx shape (batched)
    ("hx-gru-layers", lambda L: L.GRU(3, 5, 2)(x3(), torch.randn(1, 2, 5)), RuntimeError,
     r"GRU: Expected hx size \(2, 2, 5\), got \(1, 2, 5\)", SAME),
    ("hx-gru-batch", lambda L: L.GRU(3, 5, 2)(x3(), torch.randn(2, 3, 5)), RuntimeError,
     r"GRU: Expected hx size \(2, 2, 5\), got \(2, 3, 5\)", SAME),
    ("hx-rnn-features", lambda L: L.RNN(3, 5, 2)(x3(), torch.randn(2, 2, 4)), RuntimeError,
     r"RNN: Expected hx size \(2, 2, 5\), got \(2, 2, 4\)", SAME),
    ("hx-rnn-bidirectional", lambda L: L.RNN(3, 5, bidirectional=True)(x3(), torch.randn(1, 2, 5)), RuntimeError,
     r"RNN: Expected hx size \(2, 2, 5\), got \(1, 2, 5\)", SAME),
    ("hx-lstm-h", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 3, 5), torch.randn(1, 2, 5))), RuntimeError,
     r"LSTM: Expected hx\[0\] size \(1, 2, 5\), got \(1, 3, 5\)", SAME),
    ("hx-lstm-c", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 2, 4))), RuntimeError,
     r"LSTM: Expected hx\[1\] size \(1, 2, 5\), got \(1, 2, 4\)", SAME),
    ("hx-lstm-proj-h", lambda L: L.LSTM(3, 5, proj_size=2)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 2, 5))),
     RuntimeError, r"LSTM: Expected hx\[0\] size \(1, 2, 2\), got \(1, 2, 5\)", SAME),
    ("hx-lstm-proj-c", lambda L: L.LSTM(3, 5, proj_size=2)(x3(), (torch.randn(1, 2, 2), torch.randn(1, 2, 2))),
     RuntimeError, r"LSTM: Expected hx\[1\] size \(1, 2, 5\), got \(1, 2, 2\)", SAME),
    ("hx-packed-batch", lambda L: L.GRU(3, 5)(pack_padded_sequence(x3(), torch.tensor([4, 3])), torch.randn(1, 3, 5)),
     RuntimeError, r"GRU: Expected hx size \(1, 2, 5\), got \(1, 3, 5\)", SAME),
    ("hx-lstm-three-states", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5),) * 3), RuntimeError,
     r"LSTM: hx must be a tuple \(h_0, c_0\), got 3 tensors", SAME),
    ("hx-lstm-single-tensor", lambda L: L.LSTM(3, 5)(x3(), torch.randn(1, 2, 5)), RuntimeError,
     r"LSTM: hx must be a tuple \(h_0, c_0\), got 1 tensors", "torch.nn fails with IndexError"),
    # ---------------------------------------------------------------- hx shape (unbatched: shapes as given)
    ("hx-unbatched-gru", lambda L: L.GRU(3, 5)(torch.randn(4, 3), torch.randn(1, 4)), RuntimeError,
     r"GRU: Expected hx size \(1, 5\), got \(1, 4\)", SAME),
    ("hx-unbatched-rnn-layers", lambda L: L.RNN(3, 5, 2)(torch.randn(4, 3), torch.randn(1, 5)), RuntimeError,
     r"RNN: Expected hx size \(2, 5\), got \(1, 5\)", SAME),
    ("hx-unbatched-lstm-h", lambda L: L.LSTM(3, 5)(torch.randn(4, 3), (torch.randn(1, 4), torch.randn(1, 5))),
     RuntimeError, r"LSTM: Expected hx\[0\] size \(1, 5\), got \(1, 4\)", SAME),
    ("hx-unbatched-lstm-c", lambda L: L.LSTM(3, 5)(torch.randn(4, 3), (torch.randn(1, 5), torch.randn(1, 4))),
     RuntimeError, r"LSTM: Expected hx\[1\] size \(1, 5\), got \(1, 4\)", SAME),
    # ---------------------------------------------------------------- hx rank vs input rank
    ("hx-2d-with-3d-input", lambda L: L.GRU(3, 5)(x3(), torch.randn(1, 5)), RuntimeError,
     r"GRU: For batched 3-D input, hx should also be 3-D but got \(2-D\)", SAME),
    ("hx-3d-with-2d-input", lambda L: L.RNN(3, 5)(torch.randn(4, 3), torch.randn(1, 1, 5)), RuntimeError,
     r"RNN: For unbatched 2-D input, hx should also be 2-D but got \(3-D\)", SAME),
    ("hx-lstm-2d-with-3d-input", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 5), torch.randn(1, 5))), RuntimeError,
     r"LSTM: For batched 3-D input, hx should also be 3-D but got \(2-D, 2-D\)", SAME),
    ("hx-lstm-3d-with-2d-input", lambda L: L.LSTM(3, 5)(torch.randn(4, 3), (torch.randn(1, 1, 5),) * 2),
     RuntimeError, r"LSTM: For unbatched 2-D input, hx should also be 2-D but got \(3-D, 3-D\)", SAME),
    ("hx-lstm-mixed-ranks", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 5))), RuntimeError,
     r"LSTM: For batched 3-D input, hx should also be 3-D but got \(3-D, 2-D\)", SAME),
    # ---------------------------------------------------------------- hx dtype
    ("hx-dtype-gru", lambda L: L.GRU(3, 5)(x3(), torch.randn(1, 2, 5, dtype=torch.float64)), RuntimeError,
     r"GRU: hx must have dtype torch\.float32 \(the input's\), got torch\.float64", SAME),
    ("hx-dtype-rnn", lambda L: L.RNN(3, 5).double()(x3(dtype=torch.float64), torch.randn(1, 2, 5)), RuntimeError,
     r"RNN: hx must have dtype torch\.float64 \(the input's\), got torch\.float32", SAME),
    ("hx-dtype-lstm-h", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5, dtype=torch.float64), torch.randn(1, 2, 5))),
     RuntimeError, r"LSTM: hx\[0\] must have dtype torch\.float32 \(the input's\), got torch\.float64", SAME),
    ("hx-dtype-lstm-c", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 2, 5, dtype=torch.float64))),
     RuntimeError, r"LSTM: hx\[1\] must have dtype torch\.float32 \(the input's\), got torch\.float64", SAME),
    # ---------------------------------------------------------------- zero time steps
    ("zero-steps-lstm", lambda L: L.LSTM(3, 5)(torch.randn(0, 2, 3)), RuntimeError,
     r"LSTM: Expected input with at least one time step, got 0 \(input shape \(0, 2, 3\)\)", SAME),
    ("zero-steps-gru-batch_first", lambda L: L.GRU(3, 5, batch_first=True)(torch.randn(2, 0, 3)), RuntimeError,
     r"GRU: Expected input with at least one time step, got 0 \(input shape \(2, 0, 3\)\)", SAME),
    ("zero-steps-rnn-unbatched", lambda L: L.RNN(3, 5)(torch.randn(0, 3)), RuntimeError,
     r"RNN: Expected input with at least one time step, got 0 \(input shape \(0, 3\)\)", SAME),
    # ---------------------------------------------------------------- malformed hand-built PackedSequence
    ("packed-batch_sizes-zero", lambda L: L.LSTM(3, 5)(packed([2, 0, 1])), ValueError,
     r"batch_sizes must all be positive, got \[2, 0, 1\]", STRICTER),
    ("packed-batch_sizes-negative", lambda L: L.GRU(3, 5)(packed([3, -1], rows=2)), ValueError,
     r"batch_sizes must all be positive, got \[3, -1\]", STRICTER),
    ("packed-batch_sizes-increasing", lambda L: L.RNN(3, 5)(packed([2, 3])), ValueError,
     r"batch_sizes must be non-increasing, got \[2, 3\]", STRICTER),
    ("packed-batch_sizes-sum-too-small", lambda L: L.LSTM(3, 5)(packed([2, 2, 1], rows=6)), ValueError,
     r"batch_sizes must sum to data\.size\(0\) = 6, got sum 5", STRICTER),
    ("packed-batch_sizes-sum-too-large", lambda L: L.GRU(3, 5)(packed([2, 2, 1], rows=4)), ValueError,
     r"batch_sizes must sum to data\.size\(0\) = 4, got sum 5", STRICTER),
    ("packed-batch_sizes-empty", lambda L: L.GRU(3, 5)(packed([], rows=0)), ValueError,
     r"batch_sizes must not be empty", STRICTER),
    ("packed-batch_sizes-int32",
     lambda L: L.LSTM(3, 5)(PackedSequence(torch.randn(4, 3), torch.tensor([2, 2], dtype=torch.int32))), ValueError,
     r"batch_sizes must be a 1-D int64 tensor, got torch\.int32", STRICTER),
    ("packed-data-3d", lambda L: L.GRU(3, 5)(PackedSequence(torch.randn(4, 1, 3), torch.tensor([2, 2]))), ValueError,
     r"PackedSequence\.data must be 2-D .*got 3-D", STRICTER),
    ("packed-sorted_indices-not-permutation",
     lambda L: L.GRU(3, 5)(packed([2, 2], sorted_indices=torch.tensor([0, 0]), unsorted_indices=torch.tensor([0, 1]))),
     ValueError, r"sorted_indices must be a permutation of range\(2\), got \[0, 0\]", STRICTER),
    # ---------------------------------------------------------------- cells
    ("cell-lstm-input-3d", lambda L: L.LSTMCell(3, 5)(torch.randn(1, 2, 3)), ValueError,
     r"LSTMCell: Expected input to be 1D or 2D, got 3D", SAME),
    ("cell-gru-input-3d", lambda L: L.GRUCell(3, 5)(torch.randn(1, 2, 3)), ValueError,
     r"GRUCell: Expected input to be 1D or 2D, got 3D", SAME),
    ("cell-rnn-input-0d", lambda L: L.RNNCell(3, 5)(torch.tensor(1.0)), ValueError,
     r"RNNCell: Expected input to be 1D or 2D, got 0D", SAME),
    ("cell-gru-hx-3d", lambda L: L.GRUCell(3, 5)(torch.randn(2, 3), torch.randn(1, 2, 5)), ValueError,
     r"GRUCell: Expected hidden to be 1D or 2D, got 3D", SAME),
    ("cell-lstm-features", lambda L: L.LSTMCell(3, 5)(torch.randn(2, 4)), RuntimeError,
     r"LSTMCell: input has inconsistent input_size: got 4 expected 3", SAME),
    ("cell-gru-features", lambda L: L.GRUCell(3, 5)(torch.randn(2, 7)), RuntimeError,
     r"GRUCell: input has inconsistent input_size: got 7 expected 3", SAME),
    ("cell-rnn-features-unbatched", lambda L: L.RNNCell(3, 5)(torch.randn(4)), RuntimeError,
     r"RNNCell: input has inconsistent input_size: got 4 expected 3", SAME),
    ("cell-gru-hx-features", lambda L: L.GRUCell(3, 5)(torch.randn(2, 3), torch.randn(2, 4)), RuntimeError,
     r"GRUCell: Expected hx size \(2, 5\), got \(2, 4\)", SAME),
    ("cell-rnn-hx-batch", lambda L: L.RNNCell(3, 5)(torch.randn(2, 3), torch.randn(3, 5)), RuntimeError,
     r"RNNCell: Expected hx size \(2, 5\), got \(3, 5\)", SAME),
    ("cell-lstm-h", lambda L: L.LSTMCell(3, 5)(torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 5))),
     RuntimeError, r"LSTMCell: Expected hx\[0\] size \(2, 5\), got \(2, 4\)", SAME),
    ("cell-lstm-c", lambda L: L.LSTMCell(3, 5)(torch.randn(2, 3), (torch.randn(2, 5), torch.randn(2, 4))),
     RuntimeError, r"LSTMCell: Expected hx\[1\] size \(2, 5\), got \(2, 4\)", SAME),
    ("cell-gru-unbatched-hx-features", lambda L: L.GRUCell(3, 5)(torch.randn(3), torch.randn(4)), RuntimeError,
     r"GRUCell: Expected hx size \(5,\), got \(4,\)", SAME),
    ("cell-gru-unbatched-hx-2d", lambda L: L.GRUCell(3, 5)(torch.randn(3), torch.randn(1, 5)), RuntimeError,
     r"GRUCell: Expected hx size \(5,\), got \(1, 5\)", SAME),
    ("cell-lstm-unbatched-c", lambda L: L.LSTMCell(3, 5)(torch.randn(3), (torch.randn(5), torch.randn(6))),
     RuntimeError, r"LSTMCell: Expected hx\[1\] size \(5,\), got \(6,\)", SAME),
    ("cell-input-dtype", lambda L: L.GRUCell(3, 5)(torch.randn(2, 3, dtype=torch.float64)), RuntimeError,
     r"GRUCell: input dtype \(torch\.float64\) does not match weight dtype \(torch\.float32\)", SAME),
    ("cell-hx-dtype", lambda L: L.RNNCell(3, 5)(torch.randn(2, 3), torch.randn(2, 5, dtype=torch.float64)),
     RuntimeError, r"RNNCell: hx must have dtype torch\.float32 \(the input's\), got torch\.float64", SAME),
    # ---------------------------------------------------------------- device mismatch, on the 'meta' device
    ("device-input-meta-params-cpu", lambda L: L.LSTM(3, 5)(x3().to("meta")), RuntimeError,
     r"LSTM: input is on meta but the parameters are on cpu", SAME),
    ("device-input-cpu-params-meta", lambda L: L.GRU(3, 5, device="meta")(x3()), RuntimeError,
     r"GRU: input is on cpu but the parameters are on meta", SAME),
    ("device-hx-meta", lambda L: L.RNN(3, 5)(x3(), torch.randn(1, 2, 5, device="meta")), RuntimeError,
     r"RNN: hx must be on cpu \(the input's device\), got meta", SAME),
    ("device-lstm-c-meta", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 2, 5, device="meta"))),
     RuntimeError, r"LSTM: hx\[1\] must be on cpu \(the input's device\), got meta", SAME),
    ("device-cell-input-meta", lambda L: L.GRUCell(3, 5)(torch.randn(2, 3, device="meta")), RuntimeError,
     r"GRUCell: input is on meta but the parameters are on cpu", SAME),
    ("device-cell-hx-meta", lambda L: L.LSTMCell(3, 5)(torch.randn(2, 3), (torch.randn(2, 5, device="meta"),) * 2),
     RuntimeError, r"LSTMCell: hx\[0\] must be on cpu \(the input's device\), got meta", SAME),
]

_ids = [row[0] for row in CASES]
assert len(set(_ids)) == len(_ids), "duplicate ids in CASES"


def _raises_exactly(exc_class, call, match=None):
    with pytest.raises(Exception) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch.nn's oneDNN notes; irrelevant here
            call()
    assert type(info.value) is exc_class, f"raised {type(info.value).__name__}: {info.value}"
    if match is not None:
        assert re.search(match, str(info.value)), f"message {str(info.value)!r} does not match {match!r}"
    return info.value


@pytest.mark.parametrize("row", CASES, ids=_ids)
def test_fastrnn_raises(row):
    _, call, exc_class, match, _ = row
    _raises_exactly(exc_class, lambda: call(fastrnn), match)


@pytest.mark.parametrize("row", [r for r in CASES if r[4] == SAME], ids=[r[0] for r in CASES if r[4] == SAME])
def test_torch_nn_raises_the_same_class(row):
    _, call, exc_class, _, _ = row
    _raises_exactly(exc_class, lambda: call(nn))


def test_table_rows_not_compared_say_why():
    for row in CASES:
        assert row[4] == SAME or (isinstance(row[4], str) and len(row[4]) > 10), row[0]


def test_well_formed_neighbours_of_the_bad_rows_run():
    """The bad rows fail because of the one thing wrong with them: the same calls with it fixed run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastrnn.LSTM(3, 5, proj_size=4)(x3())
        fastrnn.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 2, 5)))
        fastrnn.LSTM(3, 5)(torch.randn(4, 3), (torch.randn(1, 5), torch.randn(1, 5)))
        fastrnn.GRU(3, 5, 2)(x3(), torch.randn(2, 2, 5))
        fastrnn.RNN(3, 5)(torch.randn(1, 2, 3))
        fastrnn.LSTM(3, 5)(packed([2, 2, 1]))
        fastrnn.GRU(3, 5)(packed([2, 2], sorted_indices=torch.tensor([1, 0]), unsorted_indices=torch.tensor([1, 0])))
        fastrnn.GRUCell(3, 5)(torch.randn(3), torch.randn(5))
        fastrnn.LSTMCell(3, 5)(torch.randn(2, 3), (torch.randn(2, 5), torch.randn(2, 5)))
        fastrnn.LSTM(3, 5, device="meta")(x3().to("meta"))


# -------------------------------------------------------------------- direct op calls

D, T, B, H, I = 1, 3, 2, 4, 5


def _lstm_args(**over):
    args = dict(x=torch.randn(T, B, I), w_ih=torch.randn(D, 4 * H, I), b_ih=torch.randn(D, 4 * H),
                h0=torch.randn(D, B, H), c0=torch.randn(D, B, H), w_hh=torch.randn(D, 4 * H, H),
                b_hh=torch.randn(D, 4 * H), w_hr=None, lengths=None, save_for_backward=False)
    args.update(over)
    return args


def _single_args(G, **over):
    args = dict(x=torch.randn(T, B, I), w_ih=torch.randn(D, G * H, I), b_ih=torch.randn(D, G * H),
                h0=torch.randn(D, B, H), w_hh=torch.randn(D, G * H, H), b_hh=torch.randn(D, G * H), lengths=None,
                save_for_backward=False)
    args.update(over)
    return args


def lstm(**over):
    a = _lstm_args(**over)
    return torch.ops.fastrnn.lstm_layer(a["x"], a["w_ih"], a["b_ih"], a["h0"], a["c0"], a["w_hh"], a["b_hh"],
                                        a["w_hr"], a["lengths"], a["save_for_backward"])


def single(op, G, **over):
    a = _single_args(G, **over)
    return getattr(torch.ops.fastrnn, op)(a["x"], a["w_ih"], a["b_ih"], a["h0"], a["w_hh"], a["b_hh"], a["lengths"],
                                          a["save_for_backward"])


def lstm_backward(**over):
    """lstm_layer_backward on a valid forward's results, with `over` replacing some arguments."""
    a = _lstm_args(save_for_backward=True)
    y, hn, cn, ws = lstm(**a)
    b = dict(grad_y=torch.randn_like(y), grad_hn=torch.randn_like(hn), grad_cn=torch.randn_like(cn), x=a["x"],
             w_ih=a["w_ih"], b_ih=a["b_ih"], h0=a["h0"], c0=a["c0"], w_hh=a["w_hh"], b_hh=a["b_hh"], w_hr=None,
             lengths=None, y=y, workspace=ws, need_grad_x=True)
    b.update(over)
    return torch.ops.fastrnn.lstm_layer_backward(*b.values())


def gru_backward(**over):
    a = _single_args(3, save_for_backward=True)
    y, hn, ws = single("gru_layer", 3, **a)
    b = dict(grad_y=torch.randn_like(y), grad_hn=torch.randn_like(hn), x=a["x"], w_ih=a["w_ih"], b_ih=a["b_ih"],
             h0=a["h0"], w_hh=a["w_hh"], b_hh=a["b_hh"], lengths=None, y=y, workspace=ws, need_grad_x=True)
    b.update(over)
    return torch.ops.fastrnn.gru_layer_backward(*b.values())


OP_CASES = [
    ("lstm-h0-batch", lambda: lstm(h0=torch.randn(D, B + 1, H)),
     r"fastrnn::lstm_layer: h0 must have shape \[1, 2, 4\] but got \[1, 3, 4\]"),
    ("lstm-h0-features", lambda: lstm(h0=torch.randn(D, B, H + 1)),
     r"fastrnn::lstm_layer: h0 must have shape \[1, 2, 4\] but got \[1, 2, 5\]"),
    ("lstm-h0-directions", lambda: lstm(h0=torch.randn(2, B, H)),
     r"fastrnn::lstm_layer: h0 must have shape \[1, 2, 4\] but got \[2, 2, 4\]"),
    ("lstm-c0", lambda: lstm(c0=torch.randn(D, B, H + 1)),
     r"fastrnn::lstm_layer: c0 must have shape \[1, 2, 4\] but got \[1, 2, 5\]"),
    ("lstm-w_hh-rows", lambda: lstm(w_hh=torch.randn(D, 4 * H + 4, H)),
     r"fastrnn::lstm_layer: w_hh must have shape \[1, 16, 4\] but got \[1, 20, 4\]"),
    ("lstm-w_hh-2d", lambda: lstm(w_hh=torch.randn(4 * H, H)),
     r"fastrnn::lstm_layer: w_hh must be 3-D \[D, G\*H, P\] but got shape \[16, 4\]"),
    ("lstm-b_hh", lambda: lstm(b_hh=torch.randn(D, 4 * H + 1)),
     r"fastrnn::lstm_layer: b_hh must have shape \[1, 16\] but got \[1, 17\]"),
    ("lstm-x-4d", lambda: lstm(x=torch.randn(D, T, B, I)),
     r"fastrnn::lstm_layer: x must be 3-D \[T, B, I\] but got 4-D with shape \[1, 3, 2, 5\]"),
    ("lstm-x-int", lambda: lstm(x=torch.ones(T, B, I, dtype=torch.int64)),
     r"fastrnn::lstm_layer: x must be a floating point tensor but got Long"),
    ("lstm-w_ih-2d", lambda: lstm(w_ih=torch.randn(4 * H, I)),
     r"fastrnn::lstm_layer: w_ih must be 3-D \[D, G\*H, I\] but got shape \[16, 5\]"),
    ("lstm-w_ih-not-gates", lambda: lstm(w_ih=torch.randn(D, 4 * H + 1, I)),
     r"fastrnn::lstm_layer: w_ih\.size\(1\) must be a positive multiple of 4 \(gates\) but got 17"),
    ("lstm-w_ih-features", lambda: lstm(w_ih=torch.randn(D, 4 * H, I + 1)),
     r"fastrnn::lstm_layer: w_ih must be \[D, G\*H, I\] with I = x\.size\(2\) = 5 but got shape \[1, 16, 6\]"),
    ("lstm-w_ih-dtype", lambda: lstm(w_ih=torch.randn(D, 4 * H, I, dtype=torch.float64)),
     r"fastrnn::lstm_layer: w_ih must have dtype Float .* but got Double"),
    ("lstm-b_ih", lambda: lstm(b_ih=torch.randn(D, 4 * H + 1)),
     r"fastrnn::lstm_layer: b_ih must have shape \[1, 16\] but got \[1, 17\]"),
    ("lstm-three-directions",
     lambda: lstm(w_ih=torch.randn(3, 4 * H, I), b_ih=None, h0=torch.randn(3, B, H), c0=torch.randn(3, B, H),
                  w_hh=torch.randn(3, 4 * H, H), b_hh=None),
     r"fastrnn::lstm_layer: w_ih\.size\(0\) \(directions\) must be 1 or 2 but got 3"),
    ("lstm-w_hh-gates-differ-from-w_ih", lambda: lstm(w_ih=torch.randn(D, 4 * H + 4, I), b_ih=None),
     r"fastrnn::lstm_layer: w_hh must have shape \[1, 20, 4\] but got \[1, 16, 4\]"),
    ("lstm-h0-dtype", lambda: lstm(h0=torch.randn(D, B, H, dtype=torch.float64)),
     r"fastrnn::lstm_layer: h0 must have dtype Float .* but got Double"),
    ("lstm-w_hr-shape", lambda: lstm(h0=torch.randn(D, B, 2), w_hh=torch.randn(D, 4 * H, 2), w_hr=torch.randn(D, 3, H)),
     r"fastrnn::lstm_layer: w_hr must have shape \[1, 2, 4\] but got \[1, 3, 4\]"),
    ("lstm-w_hr-not-smaller", lambda: lstm(w_hr=torch.randn(D, H, H)),
     r"fastrnn::lstm_layer: with w_hr the projection size P = 4 must be in \[1, H - 1\] with H = 4"),
    ("lstm-w_hr-zero-proj",
     lambda: lstm(h0=torch.randn(D, B, 0), w_hh=torch.randn(D, 4 * H, 0), w_hr=torch.randn(D, 0, H)),
     r"fastrnn::lstm_layer: with w_hr the projection size P = 0 must be in \[1, H - 1\] with H = 4"),
    ("lstm-lengths-negative", lambda: lstm(lengths=torch.tensor([3, -1])),
     r"fastrnn::lstm_layer: lengths\[1\] must be in \[0, 3\] but got -1"),
    ("lstm-lengths-above-T", lambda: lstm(lengths=torch.tensor([4, 1])),
     r"fastrnn::lstm_layer: lengths\[0\] must be in \[0, 3\] but got 4"),
    ("lstm-lengths-huge", lambda: lstm(lengths=torch.tensor([2**40, 1])),
     r"fastrnn::lstm_layer: lengths\[0\] must be in \[0, 3\] but got 1099511627776"),
    ("lstm-lengths-int32", lambda: lstm(lengths=torch.tensor([3, 1], dtype=torch.int32)),
     r"fastrnn::lstm_layer: lengths must be int64 but got Int"),
    ("lstm-lengths-float", lambda: lstm(lengths=torch.tensor([3.0, 1.0])),
     r"fastrnn::lstm_layer: lengths must be int64 but got Float"),
    ("lstm-lengths-count", lambda: lstm(lengths=torch.tensor([3, 1, 1])),
     r"fastrnn::lstm_layer: lengths must have shape \[2\] but got \[3\]"),
    ("lstm-lengths-2d", lambda: lstm(lengths=torch.tensor([[3, 1]])),
     r"fastrnn::lstm_layer: lengths must have shape \[2\] but got \[1, 2\]"),
    ("gru-h0", lambda: single("gru_layer", 3, h0=torch.randn(D, B, H - 1)),
     r"fastrnn::gru_layer: h0 must have shape \[1, 2, 4\] but got \[1, 2, 3\]"),
    ("gru-b_hh", lambda: single("gru_layer", 3, b_hh=torch.randn(D, 4 * H)),
     r"fastrnn::gru_layer: b_hh must have shape \[1, 12\] but got \[1, 16\]"),
    ("gru-lengths-above-T", lambda: single("gru_layer", 3, lengths=torch.tensor([5, 1])),
     r"fastrnn::gru_layer: lengths\[0\] must be in \[0, 3\] but got 5"),
    ("gru-lengths-int32", lambda: single("gru_layer", 3, lengths=torch.tensor([3, 1], dtype=torch.int32)),
     r"fastrnn::gru_layer: lengths must be int64 but got Int"),
    ("rnn_tanh-w_hh-not-square",
     lambda: single("rnn_tanh_layer", 1, h0=torch.randn(D, B, H + 1), w_hh=torch.randn(D, H, H + 1)),
     r"fastrnn::rnn_tanh_layer: without w_hr, w_hh must be .*\[1, 4, 4\] but got \[1, 4, 5\]"),
    ("rnn_tanh-h0-directions", lambda: single("rnn_tanh_layer", 1, h0=torch.randn(2, B, H)),
     r"fastrnn::rnn_tanh_layer: h0 must have shape \[1, 2, 4\] but got \[2, 2, 4\]"),
    ("rnn_relu-lengths-negative", lambda: single("rnn_relu_layer", 1, lengths=torch.tensor([-3, 1])),
     r"fastrnn::rnn_relu_layer: lengths\[0\] must be in \[0, 3\] but got -3"),
    ("rnn_relu-lengths-float", lambda: single("rnn_relu_layer", 1, lengths=torch.tensor([3.0, 1.0])),
     r"fastrnn::rnn_relu_layer: lengths must be int64 but got Float"),
    ("lstm_backward-grad_y", lambda: lstm_backward(grad_y=torch.randn(T, B, H + 1)),
     r"fastrnn::lstm_layer_backward: grad_y must have shape \[3, 2, 4\] but got \[3, 2, 5\]"),
    ("lstm_backward-grad_hn", lambda: lstm_backward(grad_hn=torch.randn(D, B + 1, H)),
     r"fastrnn::lstm_layer_backward: grad_hn must have shape \[1, 2, 4\] but got \[1, 3, 4\]"),
    ("lstm_backward-workspace", lambda: lstm_backward(workspace=torch.randn(D, T, B, 5 * H - 1)),
     r"fastrnn::lstm_layer_backward: workspace must have shape \[1, 3, 2, 20\] but got \[1, 3, 2, 19\]"),
    ("lstm_backward-no-workspace", lambda: lstm_backward(workspace=torch.empty(0)),
     r"fastrnn::lstm_layer_backward: workspace must have shape \[1, 3, 2, 20\] but got \[0\]"),
    ("lstm_backward-lengths-above-T", lambda: lstm_backward(lengths=torch.tensor([9, 1])),
     r"fastrnn::lstm_layer_backward: lengths\[0\] must be in \[0, 3\] but got 9"),
    ("lstm_backward-x-features", lambda: lstm_backward(x=torch.randn(T, B, I + 1)),
     r"fastrnn::lstm_layer_backward: w_ih must be \[D, G\*H, I\] with I = x.size\(2\) = 6 but got shape \[1, 16, 5\]"),
    ("lstm_backward-y-steps", lambda: lstm_backward(y=torch.randn(T + 1, B, H)),
     r"fastrnn::lstm_layer_backward: y must have shape \[3, 2, 4\] but got \[4, 2, 4\]"),
    ("gru_backward-b_ih", lambda: gru_backward(b_ih=torch.randn(D, 3 * H + 1)),
     r"fastrnn::gru_layer_backward: b_ih must have shape \[1, 12\] but got \[1, 13\]"),
    ("gru_backward-grad_y", lambda: gru_backward(grad_y=torch.randn(T + 1, B, H)),
     r"fastrnn::gru_layer_backward: grad_y must have shape \[3, 2, 4\] but got \[4, 2, 4\]"),
    ("gru_backward-lengths-negative", lambda: gru_backward(lengths=torch.tensor([3, -2])),
     r"fastrnn::gru_layer_backward: lengths\[1\] must be in \[0, 3\] but got -2"),
]


@pytest.mark.parametrize("call, match", [r[1:] for r in OP_CASES], ids=[r[0] for r in OP_CASES])
def test_op_rejects_inconsistent_arguments(call, match):
    _raises_exactly(RuntimeError, call, match)


def test_op_valid_arguments_run():
    """The op rows above are valid calls with one thing changed: unchanged, each runs."""
    y, hn, cn, ws = lstm(save_for_backward=True)
    assert y.shape == (T, B, H) and hn.shape == (D, B, H) and cn.shape == (D, B, H) and ws.numel() > 0
    lstm(lengths=torch.tensor([3, 0]))
    lstm(h0=torch.randn(D, B, 2), w_hh=torch.randn(D, 4 * H, 2), w_hr=torch.randn(D, 2, H))
    for op, G in (("gru_layer", 3), ("rnn_tanh_layer", 1), ("rnn_relu_layer", 1)):
        single(op, G, lengths=torch.tensor([3, 1]))
    lstm_backward()
    gru_backward()


def test_op_error_leaves_the_process_usable():
    """After a rejected call, a valid one still runs and gives the same result as before it."""
    torch.manual_seed(0)
    args = _lstm_args()
    before = lstm(**args)[0].clone()
    with pytest.raises(RuntimeError):
        lstm(**{**args, "lengths": torch.tensor([7, -7])})
    torch.testing.assert_close(lstm(**args)[0], before, rtol=0, atol=0)
