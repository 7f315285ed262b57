"""examples/torch_ddp_hook.py under a real ``torchrun --standalone --nproc_per_node 2``: DDP with
mpiopt's IntSGD hook trains, and the ranks end with identical parameters (the script exits 1 if not)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "torch_ddp_hook.py"


def test_ddp_intsgd_hook_under_torchrun():
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip(f"no torchrun beside {sys.executable}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(EXAMPLE), "--epochs", "2"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-4000:]}"
    assert "parameters identical on all ranks: True" in res.stdout, res.stdout
    accuracy = float(re.search(r"test accuracy ([0-9.]+) % after 2 epochs on 2 ranks", res.stdout).group(1))
    assert accuracy > 80.0, res.stdout
