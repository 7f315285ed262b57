"""The CUDA C of mpiopt/kernels/cupy.py: every kernel, for every element type it is built for,
compiles with nvcc (skipped where there is no CUDA toolkit) without a fused multiply-add, and every kernel has its numpy twin
in the CuPy-rules module (else the CPU tests could not run the CuPy path)."""

import shutil
import subprocess

import numpy as np
import pytest

import _cupy_rules as rules
from mpiopt.kernels.cupy import HALF, PREAMBLE, _SOURCES, kernel_body

FLOATS = (np.float16, np.float32, np.float64)
INTS = (np.int8, np.int16, np.int32, np.int64)
OUTS = (np.float32, np.float64)
BUILDS = {
    "sqdiff": [dict(T=t) for t in FLOATS], "absmax": [dict(T=t) for t in FLOATS],
    "qmax": [dict(T=t) for t in FLOATS], "values": [dict(T=t) for t in FLOATS],
    "pack": [dict(T=t, Q=q) for t in FLOATS for q in INTS], "local": [dict(T=t, O=o) for t in FLOATS for o in OUTS],
    "decode": [dict(S=q, O=o) for q in INTS for o in OUTS],
    "decode_update": [dict(S=q, O=o) for q in INTS for o in OUTS],
    "noise": [{}], "combine_sum": [{}], "combine_max": [{}], "finish": [{}],
}
"""Every kernel with the element types the Quantizer launches it with."""


def test_every_kernel_has_a_twin_and_a_build_list():
    assert set(BUILDS) == set(_SOURCES) == set(rules.TWINS)


def test_every_kernel_compiles_with_nvcc(tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no CUDA toolkit (nvcc) on this machine")
    bodies = [kernel_body(kind, **types) for kind, builds in BUILDS.items() for types in builds]
    src = tmp_path / "mpiopt_kernels.cu"
    src.write_text(HALF + PREAMBLE + "\n".join(bodies))
    res = subprocess.run([nvcc, "-std=c++14", "--ptx", "-o", str(tmp_path / "k.ptx"), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    ptx = (tmp_path / "k.ptx").read_text()
    assert ptx.count(".entry") == len(bodies)
    # the integers are numpy's only if alpha * v + u is never contracted into a fused multiply-add
    assert "fma.rn.f64" not in ptx and "fma.rn.f32" not in ptx
