"""The CPU-only wheel, built and installed the way a user would (slow: a build and two torch installs).

Builds `FASTRNN_NO_CUDA=1 pip wheel --no-build-isolation --no-deps -w DIST SRC` from a copy of the
source, checks its name, metadata and contents, installs it with torch into a fresh virtual environment
(no access to this one's site-packages), runs a parity smoke test there, then swaps in another torch
minor version and checks that importing fastrnn fails with a message naming both versions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_RELEASE = torch.__version__.split("+")[0]
TORCH_MINOR = ".".join(TORCH_RELEASE.split(".")[:2])
# Another torch that pip can install here, for the mismatch check (2.13.0 is a CPU build, 2.14.1 CUDA).
OTHER_TORCH = "2.13.0" if TORCH_MINOR != "2.13" else "2.14.1"

SMOKE = r"""
import torch, fastrnn
info = fastrnn.backend_info()
assert info["extension_loaded"] and info["cpu_kernels"], info
assert info["version"] == fastrnn.__version__ and fastrnn.__version__.endswith("+cputorch" + info["built_for_torch"])
assert info["built_with_cuda"] is None and not info["cuda_kernels"], info
torch.manual_seed(0)
ref = torch.nn.LSTM(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64)
twin = fastrnn.LSTM(5, 7, num_layers=2, bidirectional=True, dtype=torch.float64)
twin.load_state_dict(ref.state_dict())
x = torch.randn(6, 3, 5, dtype=torch.float64, requires_grad=True)
outs = []
for m in (ref, twin):
    out, (h, c) = m(x)
    (g,) = torch.autograd.grad(out.sum() + h.sum() + c.sum(), x)
    outs.append((out, h, c, g))
for a, b in zip(*outs):
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
print("SMOKE OK", fastrnn.__version__)
"""


def _run(cmd, **kwargs):
    done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def cpu_wheel(tmp_path_factory):
    """A CPU-only wheel built from a copy of the tracked source files (so no build output of this checkout
    can leak into it)."""
    src = tmp_path_factory.mktemp("src")
    files = _run(["git", "-C", ROOT, "ls-files", "-z"]).stdout.split("\0")
    for name in filter(None, files):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(src, name)), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(src, name))
    dist = tmp_path_factory.mktemp("dist")
    env = {**os.environ, "FASTRNN_NO_CUDA": "1", "MAX_JOBS": os.environ.get("MAX_JOBS", "2")}
    _run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w", str(dist), str(src)],
         env=env, timeout=1800)
    wheels = [f for f in os.listdir(dist) if f.endswith(".whl")]
    assert len(wheels) == 1, wheels
    return os.path.join(dist, wheels[0])


def test_cpu_wheel_name_metadata_and_contents(cpu_wheel):
    name = os.path.basename(cpu_wheel)
    assert name.startswith(f"fastrnn-0.1.0+cputorch{TORCH_MINOR}-"), name
    with zipfile.ZipFile(cpu_wheel) as wheel:
        names = wheel.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = wheel.read(f"{dist_info}/METADATA").decode()
    assert f"Requires-Dist: torch=={TORCH_MINOR}.*" in metadata
    assert any(n.startswith("fastrnn/_C.") and n.endswith(".so") for n in names), names
    assert "fastrnn/_build.py" in names and "fastrnn/__init__.py" in names
    # The package and its metadata only: no sources, objects, build files or tests.
    assert all(n.startswith(("fastrnn/", dist_info + "/")) for n in names), names
    assert not [n for n in names if n.endswith((".o", ".cpp", ".cu", ".h", ".ninja", ".pyc"))], names
    print(f"{name}: {os.path.getsize(cpu_wheel) / 2**20:.1f} MiB, {len(names)} files")


def test_cpu_wheel_installs_and_works_in_a_fresh_venv(cpu_wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])  # without this environment's site-packages
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + [f"torch=={TORCH_RELEASE}", cpu_wheel], timeout=1800)
    smoke = _run([python, "-c", SMOKE], cwd=tmp_path, timeout=600)  # cwd: not the checkout
    assert "SMOKE OK 0.1.0+cputorch" in smoke.stdout

    # Another torch minor version under the same wheel: a clear ImportError, not a crash or a symbol error.
    _run(pip + ["--no-deps", f"torch=={OTHER_TORCH}"], timeout=1800)
    done = subprocess.run([python, "-c", "import fastrnn"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "ImportError" in done.stderr
    assert f"was built for torch {TORCH_MINOR}" in done.stderr and f"torch {OTHER_TORCH}" in done.stderr, done.stderr
