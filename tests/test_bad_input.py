"""Bad input raises the exception class torch.nn raises, with a message naming what was expected and given.

Everything is written down as tables. A row of CASES is

    (id, call, exception class, message regex, torch_nn)

where `call(lib)` builds a module from `lib` (torch.nn or fastrnn) and calls it, and `torch_nn` is
SAME when torch.nn raises the very same exception class for that call and fastrnn's message starts
with torch.nn's (fastrnn's detail follows it), class_only(why) when torch.nn raises the same class
with a message about its own internals (a matmul's), or otherwise a string saying why torch.nn is not
compared (e.g. fastrnn is deliberately stricter).

OP_CASES are direct calls of torch.ops.fastrnn.* with inconsistent arguments: each must raise a
RuntimeError naming the op, the tensor and the expected and given values (and not crash the process).
"""

from __future__ import annotations

import re
import warnings
from itertools import product

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn

SAME = "same"


def class_only(why: str) -> tuple:
    return ("class only", why)

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
    ("ctor-num_layers-float", lambda L: L.LSTM(4, 5, 2.0), TypeError,
     r"'float' object cannot be interpreted as an integer \(num_layers should be of type int, got: float\)", SAME),
    # ---------------------------------------------------------------- input rank and dtype
    ("input-1d", lambda L: L.LSTM(3, 5)(torch.randn(3)), ValueError,
     r"LSTM: Expected input to be 2D or 3D, got 1D", SAME),
    ("input-4d", lambda L: L.GRU(3, 5)(torch.randn(1, 4, 2, 3)), ValueError,
     r"GRU: Expected input to be 2D or 3D, got 4D", SAME),
    ("input-0d", lambda L: L.RNN(3, 5)(torch.tensor(1.0)), ValueError,
     r"RNN: Expected input to be 2D or 3D, got 0D", SAME),
    ("input-not-a-tensor", lambda L: L.GRU(3, 5)([[1.0, 2.0, 3.0]]), AttributeError,
     r"'list' object has no attribute 'dim' \(GRU: input must be a Tensor or PackedSequence\)", SAME),
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
     "torch.nn's LSTM does not check packed input (its GRU and RNN do): it fails later, in a matmul (RuntimeError)"),
    ("input-dtype-packed-gru",
     lambda L: L.GRU(3, 5)(pack_padded_sequence(x3(dtype=torch.float64), torch.tensor([4, 2]))),
     ValueError, r"^RNN input dtype \(torch\.float64\) does not match weight dtype \(torch\.float32\)\. Convert input: "
     r"input\.to\(torch\.float32\), or convert model: model\.to\(torch\.float64\)$", SAME),
    # ---------------------------------------------------------------- feature size
    ("input-features-lstm", lambda L: L.LSTM(3, 5)(x3(I=4)), RuntimeError,
     r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 4", SAME),
    ("input-features-gru-unbatched", lambda L: L.GRU(3, 5)(torch.randn(4, 2)), RuntimeError,
     r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 2", SAME),
    ("input-features-rnn-batch_first", lambda L: L.RNN(3, 5, batch_first=True)(torch.randn(2, 4, 6)), RuntimeError,
     r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 6", SAME),
    ("input-features-packed", lambda L: L.GRU(3, 5)(pack_padded_sequence(x3(I=4), torch.tensor([4, 3]))), RuntimeError,
     r"input\.size\(-1\) must be equal to input_size\. Expected 3, got 4", SAME),
    # ---------------------------------------------------------------- hx shape (batched)
    ("hx-gru-layers", lambda L: L.GRU(3, 5, 2)(x3(), torch.randn(1, 2, 5)), RuntimeError,
     r"Expected hidden size \(2, 2, 5\), got \[1, 2, 5\]$", SAME),
    ("hx-gru-batch", lambda L: L.GRU(3, 5, 2)(x3(), torch.randn(2, 3, 5)), RuntimeError,
     r"Expected hidden size \(2, 2, 5\), got \[2, 3, 5\]$", SAME),
    ("hx-rnn-features", lambda L: L.RNN(3, 5, 2)(x3(), torch.randn(2, 2, 4)), RuntimeError,
     r"Expected hidden size \(2, 2, 5\), got \[2, 2, 4\]$", SAME),
    ("hx-rnn-bidirectional", lambda L: L.RNN(3, 5, bidirectional=True)(x3(), torch.randn(1, 2, 5)), RuntimeError,
     r"Expected hidden size \(2, 2, 5\), got \[1, 2, 5\]$", SAME),
    ("hx-lstm-h", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 3, 5), torch.randn(1, 2, 5))), RuntimeError,
     r"Expected hidden\[0\] size \(1, 2, 5\), got \[1, 3, 5\]$", SAME),
    ("hx-lstm-c", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 2, 4))), RuntimeError,
     r"Expected hidden\[1\] size \(1, 2, 5\), got \[1, 2, 4\]$", SAME),
    ("hx-lstm-proj-h", lambda L: L.LSTM(3, 5, proj_size=2)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 2, 5))),
     RuntimeError, r"Expected hidden\[0\] size \(1, 2, 2\), got \[1, 2, 5\]$", SAME),
    ("hx-lstm-proj-c", lambda L: L.LSTM(3, 5, proj_size=2)(x3(), (torch.randn(1, 2, 2), torch.randn(1, 2, 2))),
     RuntimeError, r"Expected hidden\[1\] size \(1, 2, 5\), got \[1, 2, 2\]$", SAME),
    ("hx-packed-batch", lambda L: L.GRU(3, 5)(pack_padded_sequence(x3(), torch.tensor([4, 3])), torch.randn(1, 3, 5)),
     RuntimeError, r"Expected hidden size \(1, 2, 5\), got \[1, 3, 5\]$",
     "fastrnn is stricter: torch.nn permutes hx before checking it, so a larger batch runs (or IndexErrors)"),
    ("hx-lstm-three-states", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5),) * 3), RuntimeError,
     r"lstm expects two hidden states \(LSTM: hx must be a tuple \(h_0, c_0\), got 3 tensors\)", SAME),
    ("hx-lstm-single-tensor", lambda L: L.LSTM(3, 5)(x3(), torch.randn(1, 2, 5)), IndexError,
     r"index 1 is out of bounds for dimension 0 with size 1 \(LSTM: hx must be a tuple \(h_0, c_0\)\)", SAME),
    ("hx-lstm-one-state", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5),)), IndexError,
     r"tuple index out of range \(LSTM: hx must be a tuple \(h_0, c_0\)\)", SAME),
    ("hx-gru-tuple", lambda L: L.GRU(3, 5)(x3(), (torch.randn(1, 2, 5),)), AttributeError,
     r"'tuple' object has no attribute 'dim' \(GRU: hx must be a Tensor\)", SAME),
    ("hx-lstm-none-state", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5), None)), AttributeError,
     r"'NoneType' object has no attribute 'dim' \(LSTM: hx must be a tuple of two Tensors\)", SAME),
    # ---------------------------------------------------------------- hx shape (unbatched: shapes as given)
    ("hx-unbatched-gru", lambda L: L.GRU(3, 5)(torch.randn(4, 3), torch.randn(1, 4)), RuntimeError,
     r"Expected hidden size \(1, 1, 5\), got \[1, 1, 4\] "
     r"\(GRU: hx must be \(1, 5\) for unbatched input, got \(1, 4\)\)",
     SAME),
    ("hx-unbatched-rnn-layers", lambda L: L.RNN(3, 5, 2)(torch.randn(4, 3), torch.randn(1, 5)), RuntimeError,
     r"Expected hidden size \(2, 1, 5\), got \[1, 1, 5\] "
     r"\(RNN: hx must be \(2, 5\) for unbatched input, got \(1, 5\)\)",
     SAME),
    ("hx-unbatched-lstm-h", lambda L: L.LSTM(3, 5)(torch.randn(4, 3), (torch.randn(1, 4), torch.randn(1, 5))),
     RuntimeError,
     r"Expected hidden\[0\] size \(1, 1, 5\), got \[1, 1, 4\] \(LSTM: hx\[0\] must be \(1, 5\) for unbatched input",
     SAME),
    ("hx-unbatched-lstm-c", lambda L: L.LSTM(3, 5)(torch.randn(4, 3), (torch.randn(1, 5), torch.randn(1, 4))),
     RuntimeError,
     r"Expected hidden\[1\] size \(1, 1, 5\), got \[1, 1, 4\] \(LSTM: hx\[1\] must be \(1, 5\) for unbatched input",
     SAME),
    # ---------------------------------------------------------------- hx rank vs input rank
    ("hx-2d-with-3d-input", lambda L: L.GRU(3, 5)(x3(), torch.randn(1, 5)), RuntimeError,
     r"^For batched 3-D input, hx should also be 3-D but got 2-D tensor$", SAME),
    ("hx-3d-with-2d-input", lambda L: L.RNN(3, 5)(torch.randn(4, 3), torch.randn(1, 1, 5)), RuntimeError,
     r"^For unbatched 2-D input, hx should also be 2-D but got 3-D tensor$", SAME),
    ("hx-lstm-2d-with-3d-input", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 5), torch.randn(1, 5))), RuntimeError,
     r"^For batched 3-D input, hx and cx should also be 3-D but got \(2-D, 2-D\) tensors$", SAME),
    ("hx-lstm-3d-with-2d-input", lambda L: L.LSTM(3, 5)(torch.randn(4, 3), (torch.randn(1, 1, 5),) * 2),
     RuntimeError, r"^For unbatched 2-D input, hx and cx should also be 2-D but got \(3-D, 3-D\) tensors$", SAME),
    ("hx-lstm-mixed-ranks", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 5))), RuntimeError,
     r"^For batched 3-D input, hx and cx should also be 3-D but got \(3-D, 2-D\) tensors$", SAME),
    # ---------------------------------------------------------------- hx dtype
    ("hx-dtype-gru", lambda L: L.GRU(3, 5)(x3(), torch.randn(1, 2, 5, dtype=torch.float64)), RuntimeError,
     r"Input and hidden tensors are not the same dtype, found input tensor with Float and hidden tensor with Double "
     r"\(GRU: hx has dtype torch\.float64, expected torch\.float32",
     class_only("torch.nn fails inside its matmul (or oneDNN) with a message about its internals")),
    ("hx-dtype-rnn", lambda L: L.RNN(3, 5).double()(x3(dtype=torch.float64), torch.randn(1, 2, 5)), RuntimeError,
     r"Input and hidden tensors are not the same dtype, found input tensor with Double and hidden tensor with Float "
     r"\(RNN: hx has dtype torch\.float32, expected torch\.float64",
     class_only("torch.nn fails inside its matmul (or oneDNN) with a message about its internals")),
    ("hx-dtype-lstm-h", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5, dtype=torch.float64), torch.randn(1, 2, 5))),
     RuntimeError, r"Input and hidden tensors are not the same dtype, .* \(LSTM: hx\[0\] has dtype torch\.float64",
     class_only("torch.nn fails inside its matmul (or oneDNN) with a message about its internals")),
    ("hx-dtype-lstm-c", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 2, 5, dtype=torch.float64))),
     RuntimeError, r"Input and hidden tensors are not the same dtype, .* \(LSTM: hx\[1\] has dtype torch\.float64",
     class_only("torch.nn fails inside its matmul (or oneDNN) with a message about its internals")),
    # ---------------------------------------------------------------- zero time steps
    ("zero-steps-lstm", lambda L: L.LSTM(3, 5)(torch.randn(0, 2, 3)), RuntimeError,
     r"Expected sequence length to be larger than 0 in RNN \(LSTM: input shape \(0, 2, 3\) has no time steps\)", SAME),
    ("zero-steps-gru-batch_first", lambda L: L.GRU(3, 5, batch_first=True)(torch.randn(2, 0, 3)), RuntimeError,
     r"Expected sequence length to be larger than 0 in RNN \(GRU: input shape \(2, 0, 3\) has no time steps\)", SAME),
    ("zero-steps-rnn-unbatched", lambda L: L.RNN(3, 5)(torch.randn(0, 3)), RuntimeError,
     r"Expected sequence length to be larger than 0 in RNN \(RNN: input shape \(0, 3\) has no time steps\)", SAME),
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
    ("packed-data-3d", lambda L: L.GRU(3, 5)(PackedSequence(torch.randn(4, 1, 3), torch.tensor([2, 2]))), RuntimeError,
     r"input must have 2 dimensions, got 3 \(GRU: PackedSequence\.data must be \[sum\(batch_sizes\), features\]\)",
     SAME),
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
     r"^input has inconsistent input_size: got 4 expected 3$", SAME),
    ("cell-gru-features", lambda L: L.GRUCell(3, 5)(torch.randn(2, 7)), RuntimeError,
     r"^input has inconsistent input_size: got 7 expected 3$", SAME),
    ("cell-rnn-features-unbatched", lambda L: L.RNNCell(3, 5)(torch.randn(4)), RuntimeError,
     r"^input has inconsistent input_size: got 4 expected 3$", SAME),
    ("cell-gru-hx-features", lambda L: L.GRUCell(3, 5)(torch.randn(2, 3), torch.randn(2, 4)), RuntimeError,
     r"hidden0 has inconsistent hidden_size: got 4, expected 5 \(GRUCell: hx must have shape \(2, 5\), got \(2, 4\)\)",
     SAME),
    ("cell-rnn-hx-batch", lambda L: L.RNNCell(3, 5)(torch.randn(2, 3), torch.randn(3, 5)), RuntimeError,
     r"Input batch size 2 doesn't match hidden0 batch size 3 \(RNNCell: hx must have shape \(2, 5\), got \(3, 5\)\)",
     SAME),
    ("cell-lstm-h", lambda L: L.LSTMCell(3, 5)(torch.randn(2, 3), (torch.randn(2, 4), torch.randn(2, 5))),
     RuntimeError, r"hidden0 has inconsistent hidden_size: got 4, expected 5 \(LSTMCell: hx\[0\]", SAME),
    ("cell-lstm-c", lambda L: L.LSTMCell(3, 5)(torch.randn(2, 3), (torch.randn(2, 5), torch.randn(2, 4))),
     RuntimeError, r"hidden1 has inconsistent hidden_size: got 4, expected 5 \(LSTMCell: hx\[1\]", SAME),
    ("cell-gru-unbatched-hx-features", lambda L: L.GRUCell(3, 5)(torch.randn(3), torch.randn(4)), RuntimeError,
     r"hidden0 has inconsistent hidden_size: got 4, expected 5 \(GRUCell: hx must have shape \(5,\), got \(4,\)\)",
     SAME),
    ("cell-gru-unbatched-hx-2d", lambda L: L.GRUCell(3, 5)(torch.randn(3), torch.randn(1, 5)), RuntimeError,
     r"hidden0 has inconsistent hidden_size: got 1, expected 5 \(GRUCell: hx must have shape \(5,\), got \(1, 5\)\)",
     SAME),
    ("cell-lstm-unbatched-c", lambda L: L.LSTMCell(3, 5)(torch.randn(3), (torch.randn(5), torch.randn(6))),
     RuntimeError,
     r"hidden1 has inconsistent hidden_size: got 6, expected 5 "
     r"\(LSTMCell: hx\[1\] must have shape \(5,\), got \(6,\)\)",
     SAME),
    ("cell-input-dtype", lambda L: L.GRUCell(3, 5)(torch.randn(2, 3, dtype=torch.float64)), RuntimeError,
     r"mat1 and mat2 must have the same dtype, but got Double and Float \(GRUCell: input dtype \(torch\.float64\) "
     r"does not match weight dtype \(torch\.float32\), that of weight_ih\)", SAME),
    ("cell-hx-dtype", lambda L: L.RNNCell(3, 5)(torch.randn(2, 3), torch.randn(2, 5, dtype=torch.float64)),
     RuntimeError, r"mat1 and mat2 must have the same dtype, but got Double and Float \(RNNCell: hx has dtype "
     r"torch\.float64, expected torch\.float32", SAME),
    # ---------------------------------------------------------------- device mismatch, on the 'meta' device
    ("device-input-meta-params-cpu", lambda L: L.LSTM(3, 5)(x3().to("meta")), RuntimeError,
     r"Input and parameter tensors are not at the same device, found input tensor at meta and parameter tensor at cpu "
     r"\(LSTM: parameter weight_ih_l0 is on cpu, expected meta", SAME),
    ("device-input-cpu-params-meta", lambda L: L.GRU(3, 5, device="meta")(x3()), RuntimeError,
     r"Input and parameter tensors are not at the same device, found input tensor at cpu and parameter tensor at meta "
     r"\(GRU: parameter weight_ih_l0 is on meta, expected cpu", SAME),
    ("device-hx-meta", lambda L: L.RNN(3, 5)(x3(), torch.randn(1, 2, 5, device="meta")), RuntimeError,
     r"Input and hidden tensors are not at the same device, found input tensor at cpu and hidden tensor at meta "
     r"\(RNN: hx is on meta, expected cpu", SAME),
    ("device-lstm-c-meta", lambda L: L.LSTM(3, 5)(x3(), (torch.randn(1, 2, 5), torch.randn(1, 2, 5, device="meta"))),
     RuntimeError, r"Input and hidden tensors are not at the same device, found input tensor at cpu and hidden tensor "
     r"at meta \(LSTM: hx\[1\] is on meta, expected cpu", SAME),
    ("device-cell-input-meta", lambda L: L.GRUCell(3, 5)(torch.randn(2, 3, device="meta")), RuntimeError,
     r"Input and parameter tensors are not at the same device, found input tensor at meta and parameter tensor at cpu "
     r"\(GRUCell: parameter weight_ih is on cpu, expected meta",
     class_only("torch.nn's cells have no device check: they fail inside a matmul")),
    ("device-cell-hx-meta", lambda L: L.LSTMCell(3, 5)(torch.randn(2, 3), (torch.randn(2, 5, device="meta"),) * 2),
     RuntimeError, r"Input and hidden tensors are not at the same device, found input tensor at cpu and hidden tensor "
     r"at meta \(LSTMCell: hx\[0\] is on meta, expected cpu",
     class_only("torch.nn's cells have no device check: they fail inside a matmul")),
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


_COMPARED = [r for r in CASES if r[4] == SAME or isinstance(r[4], tuple)]
_SAME = [r for r in CASES if r[4] == SAME]


@pytest.mark.parametrize("row", _COMPARED, ids=[r[0] for r in _COMPARED])
def test_torch_nn_raises_the_same_class(row):
    _, call, exc_class, _, _ = row
    _raises_exactly(exc_class, lambda: call(nn))


@pytest.mark.parametrize("row", _SAME, ids=[r[0] for r in _SAME])
def test_message_leads_with_torch_nns(row):
    _, call, exc_class, _, _ = row
    torch_message = str(_raises_exactly(exc_class, lambda: call(nn)))
    torch.manual_seed(0)
    message = str(_raises_exactly(exc_class, lambda: call(fastrnn)))
    assert message.startswith(torch_message), f"fastrnn: {message!r}\ntorch.nn: {torch_message!r}"


def test_table_rows_not_compared_say_why():
    for row in CASES:
        why = row[4][1] if isinstance(row[4], tuple) else row[4]
        assert row[4] == SAME or (isinstance(why, str) and len(why) > 10), row[0]


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


# -------------------------------------------------------------------- every parameter, where it is used
# Each parameter of each layer and direction (1-2 layers, bidirectional, proj_size, bias on and off) and of
# each cell, made wrong one at a time: on the meta device, of another dtype, of another shape. fastrnn raises
# the class torch.nn raises (where torch.nn raises at all) and names the parameter; where torch.nn has a
# message for it (a device), fastrnn's starts with it. A non-contiguous parameter is no error: it gives
# torch.nn's results.

LAYER_CONFIGS = [(mode, layers, bidirectional, bias, proj)
                 for mode in ("RNN", "GRU", "LSTM") for layers in (1, 2) for bidirectional in (False, True)
                 for bias in (True, False) for proj in ((0, 2) if mode == "LSTM" else (0,))]
CELL_CONFIGS = [(cls, bias) for cls in ("RNNCell", "GRUCell", "LSTMCell") for bias in (True, False)]


def _layer_pair(mode, layers, bidirectional, bias, proj):
    torch.manual_seed(0)
    kwargs = dict(num_layers=layers, bidirectional=bidirectional, bias=bias)
    if proj:
        kwargs["proj_size"] = proj
    reference = getattr(nn, mode)(3, 4, **kwargs)
    twin = getattr(fastrnn, mode)(3, 4, **kwargs)
    twin.load_state_dict(reference.state_dict())
    return reference, twin


def _cell_pair(cls, bias):
    torch.manual_seed(0)
    reference = getattr(nn, cls)(3, 4, bias=bias)
    twin = getattr(fastrnn, cls)(3, 4, bias=bias)
    twin.load_state_dict(reference.state_dict())
    return reference, twin


def _parameter_cases(configs, pair):
    for config in configs:
        for name, _ in pair(*config)[1].named_parameters():
            yield pytest.param(config, name, id="-".join(map(str, config)) + f"-{name}")


LAYER_PARAMS = list(_parameter_cases(LAYER_CONFIGS, _layer_pair))
CELL_PARAMS = list(_parameter_cases(CELL_CONFIGS, _cell_pair))
FAULTS = ("meta", "dtype", "shape")


def _faulty(p: torch.Tensor, fault: str) -> nn.Parameter:
    if fault == "meta":
        return nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="meta"))
    if fault == "dtype":
        return nn.Parameter(p.detach().double())
    if fault == "shape":
        return nn.Parameter(p.detach()[:-1].clone())
    if fault == "non-contiguous":  # the same values, in every other element of a wider tensor
        wide = torch.zeros(*p.shape[:-1], 2 * p.shape[-1], dtype=p.dtype)
        wide[..., ::2] = p.detach()
        q = nn.Parameter(wide)[..., ::2]
        assert not q.is_contiguous() and torch.equal(q, p)
        return q
    raise ValueError(fault)


def _set_both(reference, twin, name, fault):
    bad = _faulty(getattr(reference, name), fault)
    for m in (reference, twin):
        if fault == "non-contiguous":  # a view of a Parameter: set it past nn.Module's Parameter check
            del m._parameters[name]
            object.__setattr__(m, name, bad)
        else:
            setattr(m, name, bad)


def _check_fault(reference, twin, name, fault, call):
    error = _raises_exactly(RuntimeError if not (fault == "dtype" and name == "weight_ih_l0") else ValueError,
                            lambda: call(twin))
    message = str(error)
    torch_error = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            call(reference)
    except Exception as e:  # noqa: BLE001 (compared below)
        torch_error = e
    if torch_error is not None:  # (torch.nn runs some of these silently, e.g. its cells on a meta weight)
        assert type(torch_error) is type(error), f"torch.nn: {torch_error!r}, fastrnn: {error!r}"
    if fault == "meta":
        assert message.startswith("Input and parameter tensors are not at the same device, found input tensor at cpu "
                                  "and parameter tensor at meta"), message
        assert f"parameter {name} is on meta, expected cpu" in message, message
        if torch_error is not None and "not at the same device" in str(torch_error):
            assert message.startswith(str(torch_error)), (message, str(torch_error))
    elif fault == "dtype" and name == "weight_ih_l0":  # torch.nn's own check of the first weight, word for word
        assert message == str(torch_error), (message, str(torch_error))
    elif fault == "dtype":
        assert name in message and "torch.float64" in message and "torch.float32" in message, message
    else:
        assert f"parameter {name} must have shape" in message or f"{name} first dim must be" in message, message


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("config, name", LAYER_PARAMS)
def test_layer_checks_every_parameter(config, name, fault):
    reference, twin = _layer_pair(*config)
    _set_both(reference, twin, name, fault)
    x = torch.randn(3, 2, 3)
    _check_fault(reference, twin, name, fault, lambda m: m(x))


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("config, name", CELL_PARAMS)
def test_cell_checks_every_parameter(config, name, fault):
    reference, twin = _cell_pair(*config)
    _set_both(reference, twin, name, fault)
    x = torch.randn(2, 3)
    _check_fault(reference, twin, name, fault, lambda m: m(x))


def _outputs_and_grads(module, *args):
    out = module(*args)
    tensors = [t for t in (out if isinstance(out, tuple) else (out,)) for t in (t if isinstance(t, tuple) else (t,))]
    loss = sum((t * (1 + torch.arange(t.numel(), dtype=t.dtype).view(t.shape))).sum() for t in tensors)
    leaves = [a for a in args if isinstance(a, torch.Tensor)] + [p for p in module.parameters()]
    return tensors + list(torch.autograd.grad(loss, leaves, allow_unused=True))


@pytest.mark.parametrize("config, name", LAYER_PARAMS + CELL_PARAMS)
def test_non_contiguous_parameter_gives_torch_nns_results(config, name):
    pair = _cell_pair if config[0].endswith("Cell") else _layer_pair
    reference, twin = pair(*config)
    _set_both(reference, twin, name, "non-contiguous")
    x = torch.randn(3, 2, 3) if pair is _layer_pair else torch.randn(2, 3)
    for a, e in zip(_outputs_and_grads(twin, x.clone().requires_grad_()),
                    _outputs_and_grads(reference, x.clone().requires_grad_())):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ("RNN", "GRU", "LSTM", "LSTMCell", "GRUCell", "RNNCell"))
def test_parameter_left_on_meta_by_load_state_dict_assign(mode):
    """load_state_dict(assign=True) of a state_dict with one tensor on meta: an error naming it, as torch.nn's
    (no garbage read from the meta tensor's missing storage)."""
    torch.manual_seed(0)
    reference = getattr(nn, mode)(3, 4)
    twin = getattr(fastrnn, mode)(3, 4)
    state = reference.state_dict()
    name = "weight_hh" if mode.endswith("Cell") else "weight_hh_l0"
    state[name] = torch.empty_like(state[name], device="meta")
    twin.load_state_dict(state, assign=True)
    assert getattr(twin, name).is_meta
    x = torch.randn(2, 3) if mode.endswith("Cell") else torch.randn(5, 2, 3)
    error = _raises_exactly(RuntimeError, lambda: twin(x),
                            r"^Input and parameter tensors are not at the same device, found input tensor at cpu and "
                            rf"parameter tensor at meta \({mode}: parameter {name} is on meta, expected cpu")
    if not mode.endswith("Cell"):  # (torch.nn's cells run on a meta weight_hh)
        reference.load_state_dict(state, assign=True)
        assert str(error).startswith(str(_raises_exactly(RuntimeError, lambda: reference(x))))


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
     r"fastrnn::lstm_layer: w_ih\.size\(1\) must be a multiple of 4 \(gates\) but got 17"),
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


# -------------------------------------------------------------------- every op argument, one bad at a time
# Every tensor argument of every op (forward and backward, LSTM with and without w_hr, two directions,
# lengths given), in both libraries of ops (fastrnn::, and the device-generic engine the CUDA ops run,
# fastrnn_engine_test::), made wrong alone: on the meta device (the dispatcher would route that call to the
# fake kernel, which checks nothing: csrc/include/fastrnn/device_checks.h checks devices first), of another
# dtype, of another shape. Each raises a RuntimeError from the op naming it. Non-contiguous arguments (the
# same values in every other element of a wider tensor) give the contiguous call's results exactly.

OP_G = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}
OT, OB, OI, OH, OD = 3, 2, 5, 4, 2


def _op_forward_args(cell, proj):
    torch.manual_seed(0)
    G, P = OP_G[cell], 2 if proj else OH
    a = dict(x=torch.randn(OT, OB, OI), w_ih=torch.randn(OD, G * OH, OI), b_ih=torch.randn(OD, G * OH),
             h0=torch.randn(OD, OB, P))
    if cell == "lstm":
        a["c0"] = torch.randn(OD, OB, OH)
    a.update(w_hh=torch.randn(OD, G * OH, P), b_hh=torch.randn(OD, G * OH))
    if cell == "lstm":
        a["w_hr"] = torch.randn(OD, P, OH) if proj else None
    a.update(lengths=torch.tensor([3, 2]), save_for_backward=True)
    return a


def _op(namespace, cell, backward):
    return getattr(getattr(torch.ops, namespace), f"{cell}_layer" + ("_backward" if backward else ""))


def _op_args(namespace, cell, proj, backward):
    a = _op_forward_args(cell, proj)
    if not backward:
        return a
    outs = _op(namespace, cell, False)(*a.values())
    b = dict(grad_y=torch.randn_like(outs[0]), grad_hn=torch.randn_like(outs[1]))
    if cell == "lstm":
        b["grad_cn"] = torch.randn_like(outs[2])
    b.update({k: v for k, v in a.items() if k != "save_for_backward"})
    b.update(y=outs[0], workspace=outs[-1], need_grad_x=True)
    return b


def _op_cases():
    for namespace, cell, backward in product(("fastrnn", "fastrnn_engine_test"), OP_G, (False, True)):
        for proj in ((False, True) if cell == "lstm" else (False,)):
            for name, value in _op_args(namespace, cell, proj, backward).items():
                if isinstance(value, torch.Tensor):
                    op = f"{cell}_layer" + ("_backward" if backward else "")
                    yield pytest.param(namespace, cell, proj, backward, name,
                                       id=f"{namespace}-{op}{'-proj' if proj else ''}-{name}")


OP_ARG_CASES = list(_op_cases())


def _bad(name, t, fault):
    if fault == "meta":
        return torch.empty(t.shape, dtype=t.dtype, device="meta")
    if fault == "dtype":
        return t.to(torch.int32) if name == "lengths" else t.double()
    if fault == "shape":
        dim = -1 if t.shape[-1] > 0 else 0  # one more element along the last dimension (the first, if that is 0)
        return torch.cat([t, t.narrow(dim, 0, 1)], dim)
    raise ValueError(fault)


@pytest.mark.parametrize("fault", ("meta", "dtype", "shape"))
@pytest.mark.parametrize("namespace, cell, proj, backward, name", OP_ARG_CASES)
def test_op_checks_every_argument(namespace, cell, proj, backward, name, fault):
    args = _op_args(namespace, cell, proj, backward)
    args[name] = _bad(name, args[name], fault)
    # (the engine's kernels name the fastrnn:: op they stand in for; the device check, the op called)
    op = f"{namespace if fault == 'meta' else 'fastrnn'}::{cell}_layer" + ("_backward" if backward else "")
    error = _raises_exactly(RuntimeError, lambda: _op(namespace, cell, backward)(*args.values()))
    message = str(error).split("\n")[0]
    assert message.startswith(f"{op}: "), message
    if fault == "meta":
        if name == "lengths":
            assert message == f"{op}: lengths must be on the CPU but is on meta", message
        elif name == "x":  # (x is the reference: the first other tensor is named, on the wrong device)
            assert re.fullmatch(rf"{op}: \w+ must be on meta \(the device of the layer input\) but is on cpu", message)
        else:
            assert message == f"{op}: {name} must be on cpu (the device of the layer input) but is on meta", message
    elif fault == "dtype":
        if name == "lengths":
            assert message == f"{op}: lengths must be int64 but got Int", message
        elif name == "x":
            assert re.fullmatch(rf"{op}: \w+ must have dtype Double \(the dtype of the layer input\) but got Float",
                                message), message
        else:
            assert message == f"{op}: {name} must have dtype Float (the dtype of the layer input) but got Double", (
                message)
    else:
        # The argument whose size disagrees is named, or (where it defines a size the others must have: x's I,
        # w_hh's P) the first one that disagrees with it.
        named = {"x": "w_ih", "w_hh": "h0"}.get(name, name)
        assert re.search(rf"\b({name}|{named})\b", message), message


def _strided(t):
    """t's values in every other element of a wider tensor: not contiguous."""
    wide = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    view = wide[..., ::2]
    assert torch.equal(view, t) and (view.numel() <= 1 or not view.is_contiguous())
    return view


@pytest.mark.parametrize("namespace, cell, proj, backward, name", OP_ARG_CASES)
def test_op_non_contiguous_argument_gives_the_same_results(namespace, cell, proj, backward, name):
    args = _op_args(namespace, cell, proj, backward)
    expected = _op(namespace, cell, backward)(*args.values())
    args[name] = _strided(args[name])
    actual = _op(namespace, cell, backward)(*args.values())
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


def test_op_arguments_all_covered():
    """Every tensor argument of every op's schema is made wrong above."""
    for namespace, cell, backward in product(("fastrnn", "fastrnn_engine_test"), OP_G, (False, True)):
        schema = _op(namespace, cell, backward).default._schema
        tensors = {a.name for a in schema.arguments if "Tensor" in str(a.type)}
        covered = {c.values[4] for c in OP_ARG_CASES if c.values[:2] == (namespace, cell) and c.values[3] == backward}
        assert tensors == covered, (namespace, cell, backward, tensors ^ covered)
