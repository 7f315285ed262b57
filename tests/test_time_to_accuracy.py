"""The time-to-accuracy and break-even benchmarks on shared memory (real mpiexec, tiny settings) and
the sparse problem generator: the contracted JSON, the crossing read from the traces, the figures."""

import json
import sys

import numpy as np
import pytest
from _bench import BENCH, run_benchmark

sys.path.insert(0, str(BENCH))

import sparse_problem  # noqa: E402
import time_to_accuracy  # noqa: E402
from mpiopt.data import load_libsvm  # noqa: E402

ROW_KEYS = {"dataset", "method", "wire", "net", "ranks", "reached", "seconds_to_tol", "bytes_to_tol",
            "iterations_to_tol"}


def test_sparse_problem_is_seeded_power_law_and_valid_libsvm(tmp_path):
    X, y = sparse_problem.generate(rows=400, dim=20_000, nnz=12, seed=3)
    X2, y2 = sparse_problem.generate(rows=400, dim=20_000, nnz=12, seed=3)
    assert (X != X2).nnz == 0 and np.array_equal(y, y2)
    assert np.all(np.diff(X.indptr) == 12) and set(np.unique(y)) == {-1.0, 1.0}
    freq = np.bincount(X.indices, minlength=20_000)
    assert freq[:10].sum() > 20 * freq[1000:1010].sum()  # a heavy head, a long thin tail
    path = tmp_path / "p.svm"
    sparse_problem.write_libsvm(X, y, path)
    X3, y3 = load_libsvm(path, n_features=20_000)
    assert np.array_equal(y3, y) and np.allclose(X3.toarray(), X.toarray(), rtol=1e-5)


def test_crossing_is_the_first_logged_row_at_or_under_tol():
    h = {"dist_sq": [4.0, None, 2.0, 0.5, 0.1]}
    assert time_to_accuracy.crossing(h, 0.5) == 3
    assert time_to_accuracy.crossing(h, 0.01) is None


def test_shm_run_writes_the_contracted_json_and_figure(tmp_path, a5a_path):
    out = tmp_path / "tta.json"
    run_benchmark([BENCH / "time_to_accuracy.py", "--net", "shm", "--ranks", "2", "--datasets", "a5a", "--methods",
          "l-svrg", "vr-intdiana", "--iters", "400", "--json", out, "--libsvm-dir", a5a_path.parent,
          "--shards-dir", tmp_path / "shards"])
    res = json.loads(out.read_text())
    rows = res["results"]
    assert [(r["method"], r["wire"]) for r in rows] == [("l-svrg", "float64"), ("l-svrg", "float32"),
                                                        ("vr-intdiana", "auto")]
    for r, run in zip(rows, res["runs"]):
        assert set(r) == ROW_KEYS
        assert r["dataset"] == "a5a" and r["net"] == "shm" and r["ranks"] == 2
        h = run["history"]
        i = time_to_accuracy.crossing({"dist_sq": h["rel_err"]}, time_to_accuracy.REL_TOL)
        assert r["reached"] == (i is not None)  # 400 iterations are too few for 1e-6 on a5a: not reached
        assert r["seconds_to_tol"] is None if i is None else r["seconds_to_tol"] == h["seconds"][i]
        assert len(run["loadavg_start"]) == 3 and run["iterations"] == 400
    # float32 sends half the bytes of float64 per iteration; the integers fewer still (the default: int8
    # and a 2-byte exponent a step)
    sent = {run["wire"]: run["history"]["wire_bytes"][-1] for run in res["runs"]}
    assert sent["float32"] * 2 == sent["float64"]
    assert sent["auto"] < sent["float32"]
    run_benchmark([BENCH / "time_to_accuracy.py", "--plot", out, "--figures", tmp_path])
    assert (tmp_path / "time_to_accuracy_a5a.png").stat().st_size > 1000


def test_break_even_grid_on_shm(tmp_path, monkeypatch):
    out = tmp_path / "be.json"
    readme = tmp_path / "README.md"
    readme.write_text("# x\n")
    import break_even

    monkeypatch.setattr(break_even, "README", readme)
    break_even.main(["--json", str(out), "--dims", "1e3", "--ranks", "2", "--nets", "shm", "--seconds", "0.1",
                     "--rounds", "2", "--max-steps", "2"])
    res = json.loads(out.read_text())
    assert [(c["net"], c["ranks"], c["dim"]) for c in res["cells"]] == [("shm", 2, 1000)]
    c = res["cells"][0]
    assert c["speedup_vs_float32"] == pytest.approx(c["sgd_float32_seconds"] / c["intsgd_seconds"])
    assert c["speedup_vs_fp16"] == pytest.approx(c["fp16_seconds"] / c["intsgd_seconds"])
    assert out.with_suffix(".png").stat().st_size > 1000
    assert "| shm | 2 |" in readme.read_text()
