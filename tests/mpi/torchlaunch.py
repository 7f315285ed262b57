"""Launching real torch.distributed jobs from tests, as torchrun would: n processes on 127.0.0.1.

Each process gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (a free port) and calls
``torch.distributed.init_process_group("gloo")`` itself (see ``_torch_common.py``). One thread per
process: the test machine's cores are shared.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest


def free_port() -> int:
    """A TCP port nobody listens on right now (the rendezvous of rank 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torch(n: int, script: Path, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` on n ranks of a gloo job; returncode 0 only when every rank exits 0.

    stdout/stderr hold every rank's output, each line prefixed by its rank. On timeout every process
    this call started is killed and the test fails with what they printed."""
    port = str(free_port())
    procs: List[subprocess.Popen] = []
    for rank in range(n):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(n), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), *map(str, args)], env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs, codes = [], []
    try:
        for rank, p in enumerate(procs):
            out, _ = p.communicate(timeout=timeout)
            outputs.append("".join(f"[{rank}] {line}\n" for line in out.splitlines()))
            codes.append(p.returncode)
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        text = "".join(p.communicate()[0] or "" for p in procs)
        pytest.fail(f"{script.name} on {n} ranks ran past {timeout} s:\n{text}")
    code = next((c for c in codes if c != 0), 0)
    return subprocess.CompletedProcess(procs[0].args, code, "".join(outputs), "")
