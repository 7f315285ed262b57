"""``mpiexec -n N mpiopt run``: trajectories, determinism, and shard checks before any iteration."""

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp

from mpilaunch import run_mpi
from mpiopt.data import load_shard
from mpiopt.problems import LogisticProblem


def numpy_gd(data_dir, n, iters, lr):
    """Plain single-process GD on the union of the n shards (the global objective)."""
    parts = [load_shard(data_dir, r, n) for r in range(n)]
    A = sp.vstack([p[0] for p in parts]).tocsr()
    b = np.concatenate([p[1] for p in parts])
    full = LogisticProblem(A, b, parts[0][2]["l2"])
    x = np.zeros(A.shape[1])
    for _ in range(iters):
        x = x - lr * full.grad(x)
    return x


@pytest.mark.parametrize("n", [1, 2, 4])
def test_gd_over_ranks_matches_single_process_numpy_gd(a5a_for, tmp_path, n):
    data = a5a_for(n)
    out = tmp_path / "gd.json"
    res = run_mpi(n, ["run", "--data", data, "--method", "gd", "--iters", 200, "--lr", 2.0,
                      "--no-progress", "--out", out])
    assert res.returncode == 0, res.stderr
    trace = json.loads(out.read_text())
    expected = numpy_gd(data, n, 200, 2.0)
    np.testing.assert_allclose(trace["x_final"], expected, rtol=0, atol=1e-12)
    assert trace["n_ranks"] == n and trace["status"] == "max_iter"
    assert trace["history"]["wire_bytes"][-1] == 200 * 8 * 123  # the peak-memory gather after the run is not counted
    assert len(trace["peak_rss_mb"]) == n and all(20 < mb < 10_000 for mb in trace["peak_rss_mb"])
    assert "f - f*" in res.stdout and "trace written to" in res.stdout


def test_same_seed_gives_bit_identical_traces(a5a_for, tmp_path):
    traces = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.json"
        res = run_mpi(4, ["run", "--data", a5a_for(4), "--method", "sgd", "--iters", 300, "--batch", 4,
                          "--seed", 7, "--no-progress", "--out", out])
        assert res.returncode == 0, res.stderr
        traces.append(json.loads(out.read_text()))
    a, b = traces
    assert a["x_final"] == b["x_final"]
    for column in ("f_gap", "dist_sq", "grad_norm_sq", "wire_bytes"):
        assert a["history"][column] == b["history"][column]


def test_tol_stops_on_distance_to_x_star(a5a_for, tmp_path):
    out = tmp_path / "gd.json"
    res = run_mpi(2, ["run", "--data", a5a_for(2), "--method", "gd", "--iters", 5000, "--tol", 1e-6,
                      "--no-progress", "--label", "GD, theory step", "--out", out])
    assert res.returncode == 0, res.stderr
    trace = json.loads(out.read_text())
    assert trace["status"] == "converged" and trace["history"]["dist_sq"][-1] <= 1e-6 < trace["history"]["dist_sq"][-2]
    assert trace["label"] == "GD, theory step"  # the legend of 'mpiopt plot'


def test_wrong_rank_count_is_caught_before_any_iteration(a5a_for, tmp_path):
    res = run_mpi(3, ["run", "--data", a5a_for(4), "--method", "gd", "--out", tmp_path / "t.json"], timeout=60)
    assert res.returncode == 2
    assert "mpiopt: error:" in res.stderr and "4 workers" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "t.json").exists()


def test_a_missing_shard_on_one_rank_stops_every_rank(a5a_for, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(a5a_for(4), data)
    (data / "shard_002.npz").unlink()
    res = run_mpi(4, ["run", "--data", data, "--method", "gd", "--out", tmp_path / "t.json"], timeout=60)
    assert res.returncode == 2
    assert "shard_002.npz" in res.stderr and "Traceback" not in res.stderr


def test_unknown_method_is_a_clear_error(a5a_for, tmp_path):
    res = run_mpi(2, ["run", "--data", a5a_for(2), "--method", "bogus", "--out", tmp_path / "t.json"], timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("unknown method 'bogus'") == 1 and "Traceback" not in res.stderr


def test_a_bad_option_value_is_reported_once_not_per_rank(a5a_for, tmp_path):
    res = run_mpi(4, ["run", "--data", a5a_for(4), "--method", "intsgd", "--wire-dtype", "int9",
                      "--out", tmp_path / "t.json"], timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("mpiopt: error: argument --wire-dtype: invalid choice: 'int9'") == 1


@pytest.mark.parametrize("args, says", [
    (["--method", "intdiana", "--levels", 4], "method 'intdiana' with compressor int does not use option(s) --levels"),
    (["--method", "diana", "--compressor", "sign"], "use ef-sgd --compressor sign"),
    (["--method", "vr-diana", "--compressor", "topk"], "use ef-sgd --compressor topk"),
    (["--method", "gd", "--batch", 8], "method 'gd' uses each rank's full local gradient; drop --batch"),
])
def test_a_method_option_error_is_reported_once_naming_what_was_typed(a5a_for, tmp_path, args, says):
    res = run_mpi(2, ["run", "--data", a5a_for(2), *args, "--no-progress", "--out", tmp_path / "t.json"], timeout=60)
    assert res.returncode == 2, res.stderr
    assert res.stderr.count(says) == 1 and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "t.json").exists()


def test_help_offers_every_registered_compressor_and_its_options():
    from mpiopt.compressors import REGISTRY

    res = subprocess.run([sys.executable, "-m", "mpiopt", "run", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "--compressor {" + ",".join(REGISTRY) + "}" in res.stdout
    for cls in REGISTRY.values():
        for option in cls.options:
            assert (option.flag in res.stdout) == option.cli, (cls.name, option.name)
