"""Build of the fastrnn extension (fastrnn._C).

The CPU kernels always build. The CUDA sources build when torch is a CUDA build and an nvcc
toolkit is found, unless FASTRNN_NO_CUDA=1. Install with

    pip install --no-build-isolation -e .

so that the extension is compiled against the torch that will run it (a build-isolated
environment would compile against whatever torch pip downloads there, and the C++ ABI of
two torch releases differs).

Environment: FASTRNN_NO_CUDA=1 (CPU-only build), TORCH_CUDA_ARCH_LIST (archs; default 9.0
when no GPU is visible, since torch's helper otherwise fails on a GPU-less builder),
MAX_JOBS (parallel compile jobs), CUDA_HOME (toolkit; default: where nvcc is).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no", "off")


def _find_cuda_home():
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc")
    candidates = [os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))] if nvcc else []
    candidates.append("/usr/local/cuda")
    # nvcc on PATH may be a wrapper outside the toolkit (/usr/local/bin/nvcc): take the first
    # candidate that is a whole toolkit (compiler, headers, libraries).
    for home in candidates:
        if all(os.path.exists(os.path.join(home, p)) for p in ("bin/nvcc", "include/cuda_runtime.h", "lib64")):
            return home
    return None


cuda_home = None if _flag("FASTRNN_NO_CUDA") else _find_cuda_home()
if cuda_home is not None:
    os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

WITH_CUDA = cuda_home is not None and torch.version.cuda is not None and os.path.exists(
    os.path.join(cuda_home, "bin", "nvcc")
)

if not WITH_CUDA and not _flag("FASTRNN_NO_CUDA"):
    why = "torch is a CPU-only build" if torch.version.cuda is None else "no nvcc/CUDA toolkit was found"
    print(f"fastrnn setup: building the CPU kernels only ({why}).", file=sys.stderr)

cxx_flags = ["-O3", "-fvisibility=hidden"]
link_flags = []
# at::parallel_for is a header template: without OpenMP enabled in *this* compile it runs
# serially. Link the libgomp torch already loaded (same soname, so no second thread pool).
if torch._C.has_openmp and sys.platform.startswith("linux"):
    cxx_flags.append("-fopenmp")
    link_flags.append("-fopenmp")
nvcc_flags = ["-O3", "--threads", "0", "-lineinfo"]
define_macros = []
include_dirs = [os.path.join(ROOT, "csrc", "include")]

sources = ["csrc/fastrnn.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
if WITH_CUDA:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    sources += sorted(glob.glob("csrc/cuda/*.cu"))
    define_macros.append(("FASTRNN_WITH_CUDA", None))
    # The CUDA build of torch ships cuBLAS/cuSPARSE headers (needed by ATen's CUDA headers)
    # as pip packages; a bare system toolkit may lack them.
    for site in sys.path:
        extra = os.path.join(site, "nvidia", "cu13", "include")
        if os.path.isdir(extra):
            include_dirs.append(extra)
            break
    ext = CUDAExtension(
        "fastrnn._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_flags,
    )
else:
    ext = CppExtension(
        "fastrnn._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )

setup(
    packages=find_packages(include=["fastrnn", "fastrnn.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
