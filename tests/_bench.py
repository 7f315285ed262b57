"""Running the benchmark scripts from tests: this Python, the repository as the working directory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def mpiexec_or_skip() -> None:
    """Skip the test, saying why, where no mpiexec is installed."""
    local = Path(sys.executable).parent / "mpiexec"
    if not local.exists() and not any((Path(p) / "mpiexec").exists() for p in os.environ.get("PATH", "").split(":")):
        pytest.skip("no mpiexec: install the [mpich] extra (pip install mpich)")


def run_benchmark(args, timeout: float = 240) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root; fails the test with the output's tail unless it exits 0."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc
