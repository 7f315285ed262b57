"""Launching real ``mpiexec`` jobs from tests: the venv's MPICH, hard timeouts, captured output."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def mpiexec_path() -> str:
    """The MPICH mpiexec installed next to this Python (the venv's), else the one on PATH."""
    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec: install the [mpich] extra (pip install mpich)")
    return found


def run_mpi(n: int, args, timeout: float = 120, env=None) -> subprocess.CompletedProcess:
    """``mpiexec -n n python -m mpiopt ARGS`` with a hard timeout; output captured as text."""
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, "-m", "mpiopt", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def run_script(n: int, script: Path, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``mpiexec -n n python SCRIPT ARGS`` for test helper scripts that call the Python API."""
    cmd = [mpiexec_path(), "-n", str(n), sys.executable, str(script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
