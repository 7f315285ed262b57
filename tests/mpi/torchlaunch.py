"""Launching real torch.distributed jobs from tests, as torchrun would: n processes on 127.0.0.1.

Each process gets RANK, WORLD_SIZE and LOCAL_RANK, and meets the others through a file rendezvous
(``MPIOPT_TEST_RENDEZVOUS``, a fresh path: no port is chosen in advance, so no other job on the
machine can take it first); ``_torch_common.py`` joins the gloo job. One thread per process: the
test machine's cores are shared.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

import pytest


def run_torch(n: int, script: Path, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` on n ranks of a gloo job; returncode 0 only when every rank exits 0.

    stdout/stderr hold every rank's output, each line prefixed by its rank. On timeout every process
    this call started is killed and the test fails with what they printed."""
    with tempfile.TemporaryDirectory(prefix="mpiopt-torchjob-") as folder:
        return _run(n, script, args, timeout, Path(folder))


def _run(n: int, script: Path, args, timeout: float, folder: Path) -> subprocess.CompletedProcess:
    """The job, each rank's output going to a file in ``folder`` (a pipe left unread could block a rank)."""
    procs: List[subprocess.Popen] = []
    logs = [folder / f"rank{rank}.log" for rank in range(n)]
    for rank in range(n):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), OMP_NUM_THREADS="1",
                   MPIOPT_TEST_RENDEZVOUS=str(folder / "store"))
        with open(logs[rank], "w") as log:
            procs.append(subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, text=True,
                                          stdout=log, stderr=subprocess.STDOUT))
    try:
        codes = [p.wait(timeout=timeout) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.wait()
        codes = None
    text = "".join(f"[{rank}] {line}\n" for rank, log in enumerate(logs) for line in log.read_text().splitlines())
    if codes is None:
        pytest.fail(f"{script.name} on {n} ranks ran past {timeout} s:\n{text}")
    code = next((c for c in codes if c != 0), 0)
    return subprocess.CompletedProcess(procs[0].args, code, text, "")
