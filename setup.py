"""Build of the fastrnn extension (fastrnn._C).

The CPU kernels always build. The CUDA sources build when torch is a CUDA build and an nvcc
toolkit is found, unless FASTRNN_NO_CUDA=1. Install with

    pip install --no-build-isolation -e .

so that the extension is compiled against the torch that will run it (a build-isolated
environment would compile against whatever torch pip downloads there, and the C++ ABI of
two torch releases differs). Build a wheel with

    pip wheel --no-build-isolation --no-deps -w dist .

Environment: FASTRNN_NO_CUDA=1 (CPU-only build), TORCH_CUDA_ARCH_LIST (archs, e.g. "8.0;9.0+PTX";
default for a wheel: every arch both this nvcc and torch's build helper support, PTX for the newest;
for other builds: the visible GPUs', or 9.0 without one), MAX_JOBS (parallel compile jobs), CUDA_HOME
(toolkit; default: where nvcc is).

The version carries what the build is for as a local label (0.1.0+cu130torch2.14, 0.1.0+cputorch2.14),
the metadata pins torch to the minor version built against, and fastrnn/_build.py (generated here)
records both, so that importing under another torch fails with a clear message (fastrnn/__init__.py).
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

BASE_VERSION = "0.1.0"
TORCH_MINOR = ".".join(torch.__version__.split("+")[0].split(".")[:2])
# What pip asked for: a wheel (bdist_wheel) gets every arch by default; a dev build only its GPU's.
BUILDING_WHEEL = "bdist_wheel" in sys.argv


def default_wheel_archs():
    """Every arch that both this nvcc (--list-gpu-code) and torch's build helper accept, oldest first,
    with PTX for the newest (so newer GPUs run it through the driver's JIT)."""
    import subprocess

    from torch.utils.cpp_extension import _get_cuda_arch_flags

    listed = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--list-gpu-code"], check=True,
                            capture_output=True, text=True).stdout.split()
    candidates = sorted({int(code[3:]) for code in listed if code.startswith("sm_") and code[3:].isdigit()})
    saved, archs = os.environ.get("TORCH_CUDA_ARCH_LIST"), []
    try:
        for sm in candidates:
            arch = f"{sm // 10}.{sm % 10}"
            os.environ["TORCH_CUDA_ARCH_LIST"] = arch
            try:
                _get_cuda_arch_flags()
            except ValueError:  # torch's helper rejects it (nvcc 13.0's sm_88, say)
                continue
            archs.append(arch)
    finally:
        if saved is None:
            os.environ.pop("TORCH_CUDA_ARCH_LIST", None)
        else:
            os.environ["TORCH_CUDA_ARCH_LIST"] = saved
    if not archs:
        raise RuntimeError(f"fastrnn setup: no CUDA arch that both nvcc ({listed}) and torch support")
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


sources = ["csrc/fastrnn.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
if WITH_CUDA:
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        if BUILDING_WHEEL:
            os.environ["TORCH_CUDA_ARCH_LIST"] = default_wheel_archs()
        elif not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
    print(f"fastrnn setup: CUDA archs {os.environ.get('TORCH_CUDA_ARCH_LIST', 'of the visible GPUs')}",
          file=sys.stderr)
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

LABEL = (f"cu{torch.version.cuda.replace('.', '')}" if WITH_CUDA else "cpu") + f"torch{TORCH_MINOR}"
# A source distribution is for any torch: no label (the wheel built from it gets its builder's).
VERSION = BASE_VERSION if "sdist" in sys.argv else f"{BASE_VERSION}+{LABEL}"
with open(os.path.join(ROOT, "fastrnn", "_build.py"), "w") as f:
    f.write(
        "# Generated by setup.py at build time: what this build of fastrnn is for. Not in git.\n"
        f"VERSION = {VERSION!r}\n"
        f"TORCH_VERSION = {torch.__version__!r}  # the torch it was compiled against\n"
        f"TORCH_MINOR = {TORCH_MINOR!r}  # the torch minor version it runs with (its ABI)\n"
        f"CUDA = {torch.version.cuda if WITH_CUDA else None!r}  # the CUDA version of its kernels, or None\n"
        f"CUDA_ARCH_LIST = {os.environ.get('TORCH_CUDA_ARCH_LIST') if WITH_CUDA else None!r}\n"
    )

setup(
    version=VERSION,
    install_requires=[f"torch=={TORCH_MINOR}.*", "numpy"],
    packages=find_packages(include=["fastrnn", "fastrnn.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
