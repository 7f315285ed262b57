"""Faults over real mpiexec jobs: a failing rank, a killed rank, NaN on one rank, kill -9 + resume.

Faults are injected by the test-only launcher ``_faulty_run.py SPEC run ARGS...`` (SPEC is
``RANK:ITER[:MODE]``); the installed ``mpiopt run`` has no fault hook, and ignores the old
``MPIOPT_FAIL_AT`` variable.
"""

import json
import time
from pathlib import Path

import numpy as np
import pytest

from mpilaunch import run_mpi, run_script

HERE = Path(__file__).resolve().parent


def run_faulty(n: int, spec: str, args, timeout: float = 120):
    """``mpiexec -n n python _faulty_run.py SPEC ARGS``: ``mpiopt ARGS`` with the fault SPEC injected."""
    return run_script(n, HERE / "_faulty_run.py", spec, *args, timeout=timeout)


def test_exception_on_rank_2_ends_every_rank_promptly(a5a_for, tmp_path):
    t0 = time.monotonic()
    res = run_faulty(4, "2:50", ["run", "--data", a5a_for(4), "--method", "sgd", "--iters", 10**7, "--no-progress",
                                 "--out", tmp_path / "t.json"], timeout=60)
    elapsed = time.monotonic() - t0
    assert res.returncode != 0 and elapsed < 10 + 5  # 5 s allowance for starting 4 Pythons
    assert "[rank 2] Traceback" in res.stderr and "mpiopt: error: [rank 2] RuntimeError: injected failure" in res.stderr
    assert res.stderr.count("injected failure at iteration 50") == 2  # traceback's last line + summary, once each
    assert not (tmp_path / "t.json").exists()


def test_sigkill_of_one_rank_ends_the_job(a5a_for, tmp_path):
    t0 = time.monotonic()
    res = run_faulty(4, "1:100:kill", ["run", "--data", a5a_for(4), "--method", "sgd", "--iters", 10**7,
                                       "--no-progress", "--out", tmp_path / "t.json"], timeout=60)
    assert res.returncode != 0 and time.monotonic() - t0 < 15


def test_nan_on_one_rank_stops_all_naming_rank_and_iteration(a5a_for, tmp_path):
    ckpt = tmp_path / "ckpt"
    out = tmp_path / "t.json"
    res = run_faulty(4, "3:25:nan", ["run", "--data", a5a_for(4), "--method", "gd", "--iters", 1000, "--no-progress",
                                     "--checkpoint-every", 10, "--checkpoint-dir", ckpt, "--out", out], timeout=60)
    assert res.returncode == 1
    assert res.stderr.count("non-finite gradient at iteration 25 on rank(s) [3]") == 1, res.stderr
    assert "Traceback" not in res.stderr
    assert json.loads(out.read_text())["status"].startswith("error: non-finite gradient")
    saved = sorted(p.name for p in ckpt.glob("rank_*"))
    assert saved == [f"rank_{r:03d}_it{k:09d}.npz" for r in range(4) for k in (10, 20)]


@pytest.mark.parametrize("method", ["sgd", "intsgd", "vr-intdiana"])
def test_kill_then_resume_is_bit_identical(a5a_for, tmp_path, method):
    data, k = a5a_for(4), 200
    common = ["run", "--data", data, "--method", method, "--iters", 2 * k, "--batch", 8, "--seed", 3,
              "--no-progress", "--log-every", 10]
    straight = run_mpi(4, [*common, "--out", tmp_path / "straight.json"])
    assert straight.returncode == 0, straight.stderr
    resumable = [*common, "--checkpoint-every", k // 2, "--out", tmp_path / "resumed.json"]
    killed = run_faulty(4, f"2:{k + 37}:kill", resumable)
    assert killed.returncode != 0 and not (tmp_path / "resumed.json").exists()
    saved = {p.name for p in (tmp_path / "resumed.json.ckpt").glob("*.npz")}
    assert {f"rank_{r:03d}_it{k:09d}.npz" for r in range(4)} <= saved, (saved, killed.stderr)  # died after k
    resumed = run_mpi(4, [*resumable, "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    a = json.loads((tmp_path / "straight.json").read_text())
    b = json.loads((tmp_path / "resumed.json").read_text())
    assert b["resumed_from"] == k
    assert a["x_final"] == b["x_final"]
    for column in ("dist_sq", "wire_bytes", "info_bits", "clipped"):
        assert a["history"][column] == b["history"][column], column
    assert a.get("wire") == b.get("wire")


@pytest.mark.parametrize("spec", ["1:5", "1:5:kill"])
def test_the_installed_cli_ignores_the_old_fault_variable(a5a_for, tmp_path, spec):
    """MPIOPT_FAIL_AT once made an installed ``mpiopt run`` fail on purpose; now it changes nothing."""
    out = tmp_path / "t.json"
    res = run_mpi(2, ["run", "--data", a5a_for(2), "--method", "sgd", "--iters", 20, "--log-every", 10,
                      "--no-progress", "--out", out], env={"MPIOPT_FAIL_AT": spec}, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "injected" not in res.stderr and "Traceback" not in res.stderr
    trace = json.loads(out.read_text())
    assert trace["status"] == "max_iter" and trace["iterations"] == 20 and trace["n_ranks"] == 2


def test_resume_refuses_a_checkpoint_of_another_configuration(a5a_for, tmp_path):
    args = ["run", "--data", a5a_for(2), "--iters", 20, "--no-progress", "--checkpoint-every", 10,
            "--checkpoint-dir", tmp_path / "ckpt"]
    assert run_mpi(2, [*args, "--method", "sgd", "--out", tmp_path / "a.json"]).returncode == 0
    res = run_mpi(2, [*args, "--method", "gd", "--resume", "--out", tmp_path / "b.json"], timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("does not match this run") == 1 and "method='sgd', this run has method='gd'" in res.stderr


def test_sixteen_ranks_start_and_finish(a5a_for, tmp_path):
    data = a5a_for(16)
    res = run_mpi(16, ["run", "--data", data, "--method", "sgd", "--iters", 200, "--no-progress",
                       "--out", tmp_path / "t.json"], timeout=180)
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "t.json").read_text())["n_ranks"] == 16


def test_memory_does_not_grow_over_10000_iterations():
    from sklearn.datasets import load_breast_cancer

    import mpiopt
    from mpiopt.problems import LogisticProblem

    data = load_breast_cancer()
    problem = LogisticProblem(data.data / np.linalg.norm(data.data, axis=1, keepdims=True), 2.0 * data.target - 1, 1e-2)
    rss = {}

    def sample_rss(k, x):
        if k in (1000, 10000):
            with open("/proc/self/statm") as fh:
                rss[k] = int(fh.read().split()[1]) * 4096
        return False

    mpiopt.minimize(problem, "sgd", iters=10000, batch=8, callback=sample_rss)
    assert rss[10000] - rss[1000] < 2 * 2**20, rss  # < 2 MiB over 9000 iterations
