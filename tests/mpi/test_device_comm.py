"""DeviceCommunicator and the int compressor on device arrays over real mpiexec jobs of 2 and 3 ranks.

On the CPU the device arrays are the CuPy-rules module's (tests/_cupy_rules.py), which moves them
through host staging as CuPy's pinned buffers would; with CuPy and a CUDA device the same checks run
on the GPU (ranks sharing it), staged and -- where the MPI library is CUDA-aware -- direct.
"""

import json
from pathlib import Path

import pytest

from mpilaunch import run_script

HERE = Path(__file__).resolve().parent


def cuda_device_or_skip():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (pip install mpiopt[gpu])")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device visible to CuPy")
    except cupy.cuda.runtime.CUDARuntimeError as err:
        pytest.skip(f"no usable CUDA device: {err}")


@pytest.mark.parametrize("n", [2, 3])
def test_collectives_and_int_steps_under_cupy_rules(n, tmp_path):
    out = tmp_path / "int.json"
    res = run_script(n, HERE / "_device_comm_checks.py", "rules", "staged", out, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(out.read_text())
    assert report["same_on_all_ranks"] and report["steps"] == 6
    assert sum(report["steps_by_wire"].values()) == 6


@pytest.mark.parametrize("mode", ["staged", "direct"])
def test_collectives_and_int_steps_on_the_gpu(mode, tmp_path):
    cuda_device_or_skip()
    if mode == "direct":
        from mpiopt.device_comm import cuda_aware_mpi

        if not cuda_aware_mpi():
            pytest.skip("this MPI library is not CUDA-aware (MPIX_Query_cuda_support() == 0)")
    out = tmp_path / "int.json"
    res = run_script(2, HERE / "_device_comm_checks.py", "cupy", mode, out, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert json.loads(out.read_text())["same_on_all_ranks"]
