"""fastrnn: drop-in torch.nn RNN/LSTM/GRU with fused kernels.

    import fastrnn
    lstm = fastrnn.LSTM(input_size, hidden_size, num_layers=2, bidirectional=True)
    model = fastrnn.convert(model)   # swap every torch.nn RNN/LSTM/GRU (and cell) in place

Importing loads the compiled extension (which registers the torch.ops.fastrnn ops). If it
cannot be loaded, fastrnn still works through its pure-PyTorch reference and warns once,
at first use, saying why.
"""

from __future__ import annotations

import torch

from . import functional, reference

__version__ = "0.1.0"

try:
    from . import _C  # noqa: F401  (registers the ops and their CPU/CUDA kernels)
    from . import _ops  # noqa: F401  (fake kernels and autograd for those ops)
except (ImportError, OSError, RuntimeError) as _error:  # a missing or mismatched build
    functional.extension_error = _error

from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, convert  # noqa: E402


def backend_info() -> dict:
    """Which kernels this build has and what it was built against.

    Keys: version, extension_loaded, extension_error, cpu_kernels, cuda_kernels, cuda_archs
    (list of 'sm_XY'), built_with_torch, running_torch, torch_cuda (torch's CUDA version or None),
    and with the extension: cuda_compiled, cpu_step_gemm (what multiplies each time step in float).
    """
    info = {
        "version": __version__,
        "extension_loaded": functional.extension_error is None,
        "extension_error": None if functional.extension_error is None else str(functional.extension_error),
        "cpu_kernels": functional.kernels_available(torch.device("cpu")),
        "cuda_kernels": functional.kernels_available(torch.device("cuda")),
        "cuda_archs": [],
        "built_with_torch": None,
        "running_torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }
    if functional.extension_error is None:
        build = _C.build_info()
        info["built_with_torch"] = build["torch"]
        info["cuda_archs"] = [f"sm_{a[:-1]}" for a in build["cuda_archs"].split(",") if a]
        info["cuda_compiled"] = bool(build["cuda"])
        info["cpu_step_gemm"] = build["cpu_step_gemm"]
    return info


__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert", "backend_info", "functional",
           "reference"]
