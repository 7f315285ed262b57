"""A checkpoint directory belongs to one run: locked while in use, never taken over by a fresh start,
and a damaged newest checkpoint falls back to an older intact one on every rank. Real mpiexec."""

import json
import subprocess
import sys

from mpilaunch import own_stderr, run_mpi

HOLD_LOCK = """
import sys
from mpiopt.checkpoint import Checkpointer
from mpiopt.comm import MPICommunicator

held = Checkpointer(sys.argv[1], MPICommunicator(), {"method": "holder"}, resume=True)
print("locked", flush=True)
sys.stdin.read()
"""


def _run_args(data, ckpt, method, iters, out):
    batch = [] if method == "gd" else ["--batch", 8]  # gd uses the full local gradient
    return ["run", "--data", data, "--method", method, "--iters", iters, *batch, "--seed", 3, "--no-progress",
            "--log-every", 10, "--checkpoint-every", 10, "--checkpoint-dir", ckpt, "--out", out]


def _listing(folder):
    return sorted(p.name for p in folder.glob("rank_*"))


def test_a_second_run_on_a_directory_in_use_exits_2_naming_the_first(a5a_for, tmp_path):
    ckpt = tmp_path / "ckpt"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(ckpt)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = run_mpi(2, _run_args(a5a_for(2), ckpt, "sgd", 20, tmp_path / "t.json"), timeout=120)
    finally:
        holder.communicate("", timeout=60)
    assert res.returncode == 2, res.stderr
    assert own_stderr(res).count("\n") == 1 and own_stderr(res).startswith(
        f"mpiopt: error: checkpoint directory {ckpt} is in use by another run (pid {holder.pid} on ")
    assert own_stderr(res).endswith("; wait for it to finish, or choose another --checkpoint-dir\n")
    assert _listing(ckpt) == []


def test_a_fresh_start_never_takes_over_a_directory_of_checkpoints(a5a_for, tmp_path):
    data, ckpt = a5a_for(2), tmp_path / "ckpt"
    assert run_mpi(2, _run_args(data, ckpt, "sgd", 20, tmp_path / "a.json")).returncode == 0
    before = {name: (ckpt / name).read_bytes() for name in _listing(ckpt)}
    other = run_mpi(2, _run_args(data, ckpt, "gd", 20, tmp_path / "b.json"), timeout=120)
    assert other.returncode == 2
    assert own_stderr(other) == (f"mpiopt: error: checkpoint directory {ckpt} already holds checkpoints of another run "
                            f"(it was written for method='sgd', this run has method='gd'); choose another "
                            f"--checkpoint-dir, or delete those files\n")
    same = run_mpi(2, _run_args(data, ckpt, "sgd", 20, tmp_path / "c.json"), timeout=120)
    assert same.returncode == 2
    assert own_stderr(same) == (f"mpiopt: error: checkpoint directory {ckpt} already holds checkpoints of this "
                           f"configuration (up to iteration 20); pass --resume to continue from them, or choose "
                           f"another --checkpoint-dir\n")
    assert {name: (ckpt / name).read_bytes() for name in _listing(ckpt)} == before


def test_resume_falls_back_past_a_truncated_newest_checkpoint(a5a_for, tmp_path):
    data, ckpt = a5a_for(2), tmp_path / "ckpt"
    straight = run_mpi(2, _run_args(data, tmp_path / "straight.ckpt", "intsgd", 40, tmp_path / "straight.json"))
    assert straight.returncode == 0, straight.stderr
    assert run_mpi(2, _run_args(data, ckpt, "intsgd", 30, tmp_path / "r.json")).returncode == 0
    newest = ckpt / "rank_001_it000000030.npz"
    newest.write_bytes(newest.read_bytes()[:1000])
    resumed = run_mpi(2, [*_run_args(data, ckpt, "intsgd", 40, tmp_path / "r.json"), "--resume"], timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count(f"mpiopt: warning: the checkpoint of iteration 30 in {ckpt} is damaged (rank 1: "
                                f"rank_001_it000000030.npz: BadZipFile") == 1, resumed.stderr
    a = json.loads((tmp_path / "straight.json").read_text())
    b = json.loads((tmp_path / "r.json").read_text())
    assert b["resumed_from"] == 20 and a["x_final"] == b["x_final"]
    assert _listing(ckpt) == [f"rank_{r:03d}_it{k:09d}.npz" for r in range(2) for k in (30, 40)]
