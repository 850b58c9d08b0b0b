"""The compiled extension itself: no AVX/AVX-512 code outside the per-capability kernels.

csrc/cpu/pointwise_avx2.cpp and pointwise_avx512.cpp are compiled for those instruction sets (a
target pragma) and picked at run time only on CPUs that have them. Any inline function they
emit under a shared name (a std:: or c10:: template, say) could be the copy the linker keeps for
the portable code too, which would then die with SIGILL on an older CPU. This reads the built
library's disassembly and checks that every function using VEX/EVEX instructions belongs to
those kernels.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

import fastrnn
from fastrnn import _C

# Function names allowed to hold AVX code: our capability namespaces and at::vec's.
ALLOWED = re.compile(r"capability_avx2|capability_avx512|at::vec::AVX2::|at::vec::AVX512::")
# VEX/EVEX-only instructions: AVX mnemonics start with "v"; plus BMI2 and AVX-512 mask moves.
SIMD_INSTRUCTION = re.compile(r"^\s+[0-9a-f]+:\s+(v[a-z0-9]+|shlx|shrx|sarx|bzhi|pdep|pext|rorx|mulx|kmov[a-z]*)\s")
FUNCTION = re.compile(r"^[0-9a-f]+ <(.*)>:$")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the capability builds exist on Linux/x86 only")
def test_no_simd_code_outside_capability_kernels():
    objdump = shutil.which("objdump")
    assert objdump is not None, "objdump (binutils) is needed to inspect the built extension"
    assert fastrnn.backend_info()["extension_loaded"]
    listing = subprocess.run([objdump, "-d", "-C", "--no-show-raw-insn", _C.__file__], check=True,
                             capture_output=True, text=True).stdout
    function, offenders, simd_functions = None, set(), set()
    for line in listing.splitlines():
        match = FUNCTION.match(line)
        if match:
            function = match.group(1)
        elif function and SIMD_INSTRUCTION.match(line):
            simd_functions.add(function)
            if not ALLOWED.search(function):
                offenders.add(function)
    assert simd_functions, "no AVX code at all: the capability kernels were not built, or the check is broken"
    assert not offenders, f"AVX instructions outside the capability kernels: {sorted(offenders)[:10]}"


