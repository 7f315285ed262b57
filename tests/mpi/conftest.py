"""Fixtures for tests that launch real ``mpiexec`` jobs of the ``mpiopt`` command."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

LIBSVM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "libsvm"


def mpiexec_path() -> str:
    """The MPICH mpiexec installed next to this Python (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec: install the [mpich] extra (pip install mpich)")
    return found


def mpiopt_cmd():
    return [sys.executable, "-m", "mpiopt"]


def run_mpi(n: int, args, timeout: float = 120, env=None, **kwargs) -> subprocess.CompletedProcess:
    """``mpiexec -n n python -m mpiopt ARGS`` with a hard timeout; output captured as text."""
    cmd = [mpiexec_path(), "-n", str(n), *mpiopt_cmd(), *map(str, args)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, **kwargs)


def run_cli(args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*mpiopt_cmd(), *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def libsvm_dir() -> Path:
    if not LIBSVM.is_dir():
        pytest.skip(f"LIBSVM data folder not found: {LIBSVM} (the tests read real datasets from there)")
    return LIBSVM


@pytest.fixture(scope="session")
def a5a_shards(libsvm_dir, tmp_path_factory):
    """A function n -> folder of a5a preprocessed for n workers (l2 = 5e-4), made once per n."""
    made = {}

    def shards(n: int) -> Path:
        if n not in made:
            out = tmp_path_factory.mktemp(f"a5a-{n}") / "shards"
            res = run_cli(["preprocess", "--file", libsvm_dir / "a5a", "--n-features", 123, "--workers", n,
                           "--l2", 5e-4, "--out", out])
            assert res.returncode == 0, res.stderr
            made[n] = out
        return made[n]

    return shards
