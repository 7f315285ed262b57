"""The Python API's rough edges of issue 25: step-size schedules, messages that name this API's
arguments, the minibatch default step, "did you mean", user-facing option lists, the Problem
protocol checked at start, and preprocess reading zero-based LIBSVM files."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import dump_svmlight_file, load_breast_cancer

import mpiopt
from mpiopt.errors import InputError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
from least_squares import LeastSquares, make_shard  # noqa: E402


@pytest.fixture(scope="module")
def ridge():
    """examples/least_squares.py's rank-3 shard (rows of norm about 2.5 sqrt(50)) and its x*."""
    problem = LeastSquares(*make_shard(3))
    x_star = np.linalg.solve(problem.A.T @ problem.A, problem.A.T @ problem.b)
    return problem, x_star


def test_a_schedule_sets_each_iterations_step(ridge):
    problem, _ = ridge
    schedule = lambda k: 0.02 / (1 + k)  # noqa: E731
    res = mpiopt.minimize(problem, "gd", iters=30, lr=schedule)
    x = np.zeros(problem.dim)
    for k in range(30):
        x = x - schedule(k) * problem.grad(x)
    np.testing.assert_allclose(res.x, x, rtol=1e-12, atol=0)
    assert res.trace["config"]["lr"] == 0.02 and res.trace["config"]["lr_schedule"].endswith(".<lambda>")
    constant = mpiopt.minimize(problem, "intsgd", iters=30, batch=4, lr=lambda k: 0.003)
    assert np.array_equal(constant.x, mpiopt.minimize(problem, "intsgd", iters=30, batch=4, lr=0.003).x)


def test_a_schedule_returning_a_bad_step_is_named_with_its_iteration(ridge):
    with pytest.raises(InputError, match=r"^the step-size schedule lr= returned -1.0 for iteration 3; it must "
                                         r"return a positive number$"):
        mpiopt.minimize(ridge[0], "gd", iters=10, lr=lambda k: -1.0 if k == 3 else 0.01)
    with pytest.raises(InputError, match=r"step size must be a positive number or a schedule .*, got lr='fast'"):
        mpiopt.minimize(ridge[0], "gd", iters=10, lr="fast")


def test_api_messages_name_the_api_arguments(ridge, capsys):
    res = mpiopt.minimize(ridge[0], "gd", iters=3, tol=1e-12)
    assert res.trace["warnings"][0].startswith("tol=1e-12 not reached in 3 iterations")
    assert "raise iters=, or check the step size (lr=)" in res.trace["warnings"][0]
    assert "--" not in capsys.readouterr().err
    with pytest.raises(InputError, match=r"^iters= must be >= 0, got -1$"):
        mpiopt.minimize(ridge[0], "gd", iters=-1)
    with pytest.raises(InputError, match=r"^wire_dtype= must be one of int8, int16, int32, int64, auto, got 'int9' "
                                         r"\(did you mean 'int8'\?\)$"):
        mpiopt.minimize(ridge[0], "intsgd", iters=1, wire_dtype="int9")


def test_cli_messages_name_the_flags(tmp_path, run_cli):
    from mpiopt.data import preprocess

    cancer = load_breast_cancer()
    preprocess(cancer.data, 2.0 * cancer.target - 1.0, 1, 1e-3, tmp_path / "bc", dataset="bc", source_sha256=None)
    common = ["run", "--data", tmp_path / "bc", "--no-progress", "--out", tmp_path / "t.json"]
    res = run_cli([*common, "--method", "gd", "--iters", 3, "--tol", 1e-12])
    assert res.returncode == 0 and "mpiopt: warning: --tol 1e-12 not reached in 3 iterations" in res.stderr
    assert "raise --iters, or check the step size (--lr)" in res.stderr
    res = run_cli([*common, "--method", "vr-intdianna"])
    assert res.returncode == 2 and res.stderr.startswith(
        "mpiopt: error: unknown method 'vr-intdianna' (did you mean 'vr-intdiana'?); choose one of: "), res.stderr
    res = run_cli([*common, "--method", "sgd", "--compressor", "qsdg"])
    assert res.returncode == 2 and "invalid choice: 'qsdg'" in res.stderr and "(did you mean 'qsgd'?)" in res.stderr
    res = run_cli([*common, "--method", "intsgd", "--levels", 3])
    assert res.returncode == 2 and "does not use option(s) --levels; it takes: --alpha, --alpha0" in res.stderr


def test_unknown_names_get_a_did_you_mean(ridge):
    with pytest.raises(InputError, match=r"unknown method 'vr-intdianna' \(did you mean 'vr-intdiana'\?\)"):
        mpiopt.minimize(ridge[0], "vr-intdianna", iters=1)
    with pytest.raises(InputError, match=r"unknown compressor 'qsdg' \(did you mean 'qsgd'\?\)"):
        mpiopt.minimize(ridge[0], "sgd", compressor="qsdg", iters=1)


def test_option_lists_show_only_user_options(ridge):
    with pytest.raises(InputError) as err:
        mpiopt.minimize(ridge[0], "intsgd", iters=1, levels=3)
    takes = str(err.value).split("it takes: ")[1].split(", ")
    assert "wire_dtype" in takes and "block_size" in takes
    assert "block_starts" not in takes and "layout" not in takes


def test_the_minibatch_default_step_follows_the_batch(ridge):
    """eta = 1 / (2 (L + L_b / n)) with L_b = (1 - 1/b) L_i + max_j ||a_j||^2 / b; with one sample a
    step, the old default 1 / (2 L_max) ignored the per-sample constant and ended far from x*
    (1.9e3 on 4 ranks of this problem), the minibatch step converges."""
    problem, x_star = ridge
    L, L_row = problem.smoothness(), problem.sample_smoothness()
    for b in (1, 4, 40):
        res = mpiopt.minimize(problem, "intsgd", iters=1, batch=b)
        L_b = (1 - 1 / b) * L + L_row / b
        assert res.trace["config"]["lr"] == pytest.approx(1 / (2 * (L + L_b)), rel=1e-12)
    new = mpiopt.minimize(problem, "intsgd", iters=3000, batch=1, x_star=x_star)
    old = mpiopt.minimize(problem, "intsgd", iters=3000, batch=1, x_star=x_star, lr=1 / (2 * L))
    x_sq = float(x_star @ x_star)
    assert new.trace["history"]["dist_sq"][-1] < 1e-3 * x_sq < old.trace["history"]["dist_sq"][-1]


def test_a_missing_member_is_named_at_start(ridge):
    class NoStochastic:
        n_samples, dim = ridge[0].n_samples, ridge[0].dim
        loss, grad = ridge[0].loss, ridge[0].grad

    with pytest.raises(InputError, match=r"^the problem \(NoStochastic\) lacks stochastic_grad\(\), smoothness\(\), "
                                         r"which method 'sgd' needs"):
        mpiopt.minimize(NoStochastic(), "sgd", iters=1)
    res = mpiopt.minimize(NoStochastic(), "gd", iters=2, L=1.0, L_max=1.0)  # gd needs neither
    assert res.nit == 2


@pytest.mark.parametrize("choice, ok", [("auto", True), ("yes", True), ("no", False), (None, True)])
def test_preprocess_reads_zero_based_files(tmp_path, choice, ok):
    cancer = load_breast_cancer()
    dump_svmlight_file(cancer.data, cancer.target, str(tmp_path / "zero.svm"))  # zero-based, sklearn's default
    dump_svmlight_file(cancer.data, cancer.target, str(tmp_path / "one.svm"), zero_based=False)
    flag = [] if choice is None else ["--zero-based", choice]
    run = [sys.executable, "-m", "mpiopt", "preprocess", "--workers", "1"]
    res = subprocess.run([*run, "--file", tmp_path / "zero.svm", *flag, "--out", tmp_path / "zero"],
                         capture_output=True, text=True, timeout=300)
    if not ok:
        assert res.returncode == 2 and "feature index 0 in a one-based file" in res.stderr
        assert "reads with --zero-based auto or yes" in res.stderr
        return
    assert res.returncode == 0, res.stderr
    ref = subprocess.run([*run, "--file", tmp_path / "one.svm", "--out", tmp_path / "one"], capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    from mpiopt.data import load_shard

    zero, one = load_shard(tmp_path / "zero", 0, 1), load_shard(tmp_path / "one", 0, 1)
    assert (zero[0] != one[0]).nnz == 0 and np.array_equal(zero[1], one[1]) and zero[0].shape == (569, 30)
