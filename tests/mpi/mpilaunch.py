"""Launching real ``mpiexec`` jobs from tests: the venv's MPICH, hard timeouts, captured output."""

import subprocess
import sys
from pathlib import Path

import pytest

from mpiopt import launch


def mpiexec_path() -> str:
    """The venv's MPICH mpiexec (see mpiopt.launch); skips the test where there is none."""
    try:
        return launch.mpiexec_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def run_mpi(n: int, args, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    """``mpiexec -n n python -m mpiopt ARGS`` with a hard timeout; output captured as text."""
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, "-m", "mpiopt", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launch.mpi_env(n, env))


def run_script(n: int, script: Path, *args, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    """``mpiexec -n n python SCRIPT ARGS`` for test helper scripts that call the Python API."""
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, str(script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=launch.mpi_env(n, env))
