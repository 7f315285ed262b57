"""TorchCommunicator over real gloo jobs (n processes on 127.0.0.1, as torchrun starts them).

The integer method's iterates are the same bits over torch.distributed as over mpi4py, even though
the wire dtypes differ (gloo has no int16 SUM, so ``auto`` climbs int8 -> int32 where MPI climbs
int8 -> int16): integer sums are exact in any dtype wide enough.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpilaunch import run_script
from torchlaunch import run_torch

pytest.importorskip("torch")
HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("n", [2, 4])
def test_minimize_over_torch_gives_the_mpi_x_final_bit_for_bit(n, a5a_for, tmp_path):
    data = a5a_for(n)
    out_torch, out_mpi = tmp_path / "torch.json", tmp_path / "mpi.json"
    res = run_torch(n, HERE / "_torch_minimize.py", "torch", data, out_torch)
    assert res.returncode == 0, res.stdout
    res = run_script(n, HERE / "_torch_minimize.py", "mpi", data, out_mpi)
    assert res.returncode == 0, res.stdout + res.stderr
    over_torch, over_mpi = json.loads(out_torch.read_text()), json.loads(out_mpi.read_text())
    assert over_torch["x"] == over_mpi["x"]
    wires_torch = over_torch["trace"]["wire"]["steps_by_wire"]
    wires_mpi = over_mpi["trace"]["wire"]["steps_by_wire"]
    assert set(wires_torch) == {"int8", "int32"}, wires_torch  # climbed, and never to int16
    assert set(wires_mpi) == {"int8", "int16"}, wires_mpi
    assert wires_torch["int32"] == wires_mpi["int16"] > 0


def test_every_collective_int16_refusal_and_auto_ladder_on_4_ranks():
    """Results and byte counts of each collective; int16 refused with the dtypes gloo sums; ``auto``
    goes int8 -> int32 on an overflow with the mean exact to 1/alpha; small integer sums and maxima
    by recursive doubling, with the ring's bits; larger ones by both in turn until the ranks agree on
    the faster; a subgroup's communicator (3 ranks: doubling with a fold) sums over its members and
    refuses a rank outside it (see _torch_comm_checks.py)."""
    res = run_torch(4, HERE / "_torch_comm_checks.py", "all", timeout=90)
    assert res.returncode == 0, res.stdout
    assert res.stdout.count("cannot sum int16 (it sums int8, int32, int64)") == 4
    assert res.stdout.count("wires: {'int8': 2, 'int32': 2}") == 4
    assert res.stdout.count("kept: ring") in (0, 4) and res.stdout.count("kept: ") == 4


@pytest.mark.parametrize("algorithm", ["doubling", "ring"])
def test_abort_ends_the_job_instead_of_hanging(algorithm):
    res = run_torch(2, HERE / "_torch_comm_checks.py", "abort", algorithm, timeout=60)
    assert res.returncode == 4, res.stdout  # rank 0's collective failed; rank 1 exited with 3
    assert "collective failed" in res.stdout


def test_mpiopt_comm_never_imports_torch():
    """mpiopt.comm (the protocol, MPICommunicator) loads no torch; TorchCommunicator lives in mpiopt.torch.comm."""
    code = ("import sys, mpiopt.comm as c; assert 'torch' not in sys.modules; "
            "assert not hasattr(c, 'TorchCommunicator'); "
            "from mpiopt.torch.comm import TorchCommunicator as T; print(T.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "mpiopt.torch.comm"
