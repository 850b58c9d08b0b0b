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

try:
    from . import _build  # written by setup.py: what this build is for
except ImportError:  # a source checkout that was never built
    _build = None

__version__ = _build.VERSION if _build is not None else "0.1.0"


def _running_torch_minor() -> str:
    return ".".join(torch.__version__.split("+")[0].split(".")[:2])


# The compiled extension only works with the torch minor version it was compiled against (the C++ ABI
# changes between releases): loading it under another gives undefined symbols or worse. Say so instead.
if _build is not None and _running_torch_minor() != _build.TORCH_MINOR:
    raise ImportError(
        f"fastrnn {__version__} was built for torch {_build.TORCH_MINOR} (compiled against {_build.TORCH_VERSION}), "
        f"but torch {torch.__version__} is installed. Install the fastrnn wheel built for torch "
        f"{_running_torch_minor()}, or rebuild from source against this torch: "
        "pip install --no-build-isolation --no-deps <fastrnn source>")

try:
    from . import _C  # noqa: F401  (registers the ops and their CPU/CUDA kernels)
    from . import _ops  # noqa: F401  (fake kernels and autograd for those ops)
    functional.plain_cell = _C.plain_cell
    functional.one_direction_layer = _C.one_direction_layer
except (ImportError, OSError, RuntimeError) as _error:  # a missing or broken build
    functional.extension_error = _error

from .modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, convert  # noqa: E402
from . import _quantization  # noqa: E402,F401  (quantize_dynamic treats the twins as torch.nn's classes)


def backend_info() -> dict:
    """Which kernels this build has and what it was built against.

    Keys: version (with its local label, e.g. 0.1.0+cu130torch2.14), extension_loaded, extension_error,
    cpu_kernels, cuda_kernels, cuda_archs (list of 'sm_XY'), built_with_torch, built_for_torch (the
    minor version it requires), built_with_cuda (the CUDA version of its kernels, or None),
    running_torch, torch_cuda (torch's CUDA version or None), and with the extension: cuda_compiled,
    cpu_step_gemm (what multiplies each time step in float).
    """
    info = {
        "version": __version__,
        "extension_loaded": functional.extension_error is None,
        "extension_error": None if functional.extension_error is None else str(functional.extension_error),
        "cpu_kernels": functional.kernels_available(torch.device("cpu")),
        "cuda_kernels": functional.kernels_available(torch.device("cuda")),
        "cuda_archs": [],
        "built_with_torch": None if _build is None else _build.TORCH_VERSION,
        "built_for_torch": None if _build is None else _build.TORCH_MINOR,
        "built_with_cuda": None if _build is None else _build.CUDA,
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


def empty_cache() -> int:
    """Free the memory fastrnn's CPU kernels keep between calls; returns its bytes.

    Each thread that ran fastrnn keeps its largest internal buffers (input projections, gate gradients), each
    up to FASTRNN_SCRATCH_LIMIT_MB (default 256, read once; larger ones are freed when their call returns),
    and the blocks of large outputs that were freed (weight gradients, workspaces: 128 KiB and up) are kept
    for the next outputs, up to FASTRNN_SCRATCH_LIMIT_MB in all, so that the next call does not pay for fresh
    pages. Like torch.cuda.empty_cache() for those; a buffer in use by a call running now is freed when that
    call returns, and a live output is never touched. On CUDA fastrnn keeps nothing of its own: its
    workspaces come from torch's caching allocator (torch.cuda.empty_cache()).
    """
    if functional.extension_error is not None:
        return 0
    return _C.empty_scratch_cache() + _C.empty_recycled_outputs()


def scratch_memory() -> dict:
    """The CPU kernels' kept memory: kept_bytes (scratch buffers now, over all threads), limit_bytes (per
    buffer, and for the recycled outputs in all) and recycled_output_bytes (freed outputs' blocks kept now)."""
    if functional.extension_error is not None:
        return {"kept_bytes": 0, "limit_bytes": 0, "recycled_output_bytes": 0}
    return {"kept_bytes": _C.scratch_bytes_kept(), "limit_bytes": _C.scratch_limit_bytes(),
            "recycled_output_bytes": _C.recycled_output_bytes()}


__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert", "backend_info", "empty_cache",
           "scratch_memory", "functional", "reference"]
