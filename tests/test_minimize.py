"""The Python API in one process (comm of size 1): results, errors, callback, checkpoint/resume."""

import json

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

import mpiopt
from mpiopt.errors import InputError
from mpiopt.problems import LogisticProblem


@pytest.fixture(scope="module")
def problem():
    data = load_breast_cancer()
    A = data.data / np.linalg.norm(data.data, axis=1, keepdims=True)
    return LogisticProblem(A, 2.0 * data.target - 1.0, l2=1e-2)


def test_gd_converges_and_result_has_everything(problem):
    res = mpiopt.minimize(problem, "gd", iters=3000, tol=1e-10)
    assert res.status == "converged" and res.success
    assert res.trace["history"]["grad_norm_sq"][-1] <= 1e-10
    assert res.nit == res.trace["history"]["iteration"][-1] < 3000
    assert res.x.shape == (problem.dim,) and res.fun == pytest.approx(problem.loss(res.x))
    json.dumps(res.trace)  # strict JSON, no NaN
    assert set(res.trace) >= {"method", "n_ranks", "seed", "config", "env", "history", "x_final", "status"}


def test_gd_matches_plain_numpy_gd(problem):
    res = mpiopt.minimize(problem, "gd", iters=50, lr=2.0)
    x = np.zeros(problem.dim)
    for _ in range(50):
        x = x - 2.0 * problem.grad(x)
    np.testing.assert_allclose(res.x, x, rtol=0, atol=1e-14)


def test_default_step_size_is_one_over_L(problem):
    res = mpiopt.minimize(problem, "gd", iters=1)
    assert res.trace["config"]["lr"] == pytest.approx(1.0 / problem.smoothness())


def test_wire_bytes_count_the_float_allreduce(problem):
    res = mpiopt.minimize(problem, "sgd", iters=10, batch=4, float_dtype="float32", log_every=5)
    assert res.trace["history"]["wire_bytes"] == [0, 5 * 4 * problem.dim, 10 * 4 * problem.dim]


def test_same_seed_same_trajectory(problem):
    a = mpiopt.minimize(problem, "sgd", iters=100, batch=8, seed=3)
    b = mpiopt.minimize(problem, "sgd", iters=100, batch=8, seed=3)
    c = mpiopt.minimize(problem, "sgd", iters=100, batch=8, seed=4)
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"method": "gd", "wire_dtype": "int8"}, "does not take option"),
        ({"method": "gd", "lr": -1.0}, "positive"),
        ({"method": "sgd", "batch": 10**6}, "batch= must be between 1 and the shard size"),
        ({"method": "gd", "batch": 8}, "method 'gd' uses each rank's full local gradient; drop batch="),
        ({"method": "gd", "tol": 0.0}, "tol= must be a positive number"),
        ({"method": "gd", "x0": np.zeros(3)}, "x0 has shape"),
    ],
)
def test_bad_options_raise_clear_input_errors(problem, kwargs, match):
    with pytest.raises(InputError, match=match):
        mpiopt.minimize(problem, iters=1, **kwargs)


def test_callback_stops_the_run(problem):
    res = mpiopt.minimize(problem, "gd", iters=100, callback=lambda k, x: k == 7)
    assert res.status == "callback" and res.nit == 7


def test_non_finite_gradient_stops_with_rank_and_iteration(problem):
    def poison(k, x):  # the next gradient is NaN (a huge lr would stop the run earlier, as 'diverged')
        if k == 3:
            x[0] = np.nan

    with pytest.raises(mpiopt.errors.RunError, match=r"non-finite gradient at iteration 3 on rank\(s\) \[0\]"):
        mpiopt.minimize(problem, "gd", iters=100, callback=poison)


def test_checkpoint_resume_is_bit_identical(problem, tmp_path):
    opts = dict(iters=60, batch=4, seed=1, log_every=10)
    straight = mpiopt.minimize(problem, "sgd", **opts)
    stop_at_30 = lambda k, x: k == 30  # noqa: E731 - the interruption
    ckpt = dict(checkpoint_dir=tmp_path, checkpoint_every=10)
    first = mpiopt.minimize(problem, "sgd", callback=stop_at_30, **ckpt, **opts)
    assert first.status == "callback"
    resumed = mpiopt.minimize(problem, "sgd", resume=True, **ckpt, **opts)
    assert resumed.trace["resumed_from"] == 30
    assert np.array_equal(resumed.x, straight.x)
    assert resumed.trace["history"] == straight.trace["history"] | {"seconds": resumed.trace["history"]["seconds"]}


def test_checkpoint_from_another_configuration_is_refused(problem, tmp_path):
    mpiopt.minimize(problem, "sgd", iters=10, batch=4, checkpoint_dir=tmp_path, checkpoint_every=5)
    with pytest.raises(InputError, match="does not match this run.*batch=4, this run has batch=8"):
        mpiopt.minimize(problem, "sgd", iters=10, batch=8, checkpoint_dir=tmp_path, checkpoint_every=5, resume=True)


def test_adversarial_alpha_is_clipped_never_wrapped_and_warns_once(problem, capsys):
    """A constant alpha far too large for int8: every coordinate would overflow the wire dtype."""
    res = mpiopt.minimize(problem, "intsgd", iters=20, batch=4, wire_dtype="int8", alpha="constant", alpha0=1e9)
    h = res.trace["history"]
    assert h["clipped"][-1] > 0.5 * 20 * problem.dim  # counted, cumulatively
    assert np.all(np.abs(res.x) < 1e3)  # clipped steps are bounded: no wrapped sum sent x flying
    assert len(res.trace["warnings"]) == 1 and "clipped" in res.trace["warnings"][0]
    assert capsys.readouterr().err.count("mpiopt: warning:") == 1


def test_auto_wire_dtype_promotes_instead_of_clipping(problem):
    res = mpiopt.minimize(problem, "intsgd", iters=20, batch=4, wire_dtype="auto", alpha="constant", alpha0=1e9)
    assert res.trace["history"]["clipped"][-1] == 0 and res.trace["warnings"] == []


def test_a_callback_may_write_the_iterate(problem):
    """A callback that writes x (as the fault-injection tests do) is followed exactly: IntSGD's update
    remembers how it moved x for the next alpha, and the runner makes it forget that after a callback
    (the numba kernel keeps the move, the numpy kernel recomputes it: the same iterates)."""
    pytest.importorskip("numba")

    def nudge(k, x):
        if k % 7 == 3:
            x[k % problem.dim] += 0.25

    runs = [mpiopt.minimize(problem, "intsgd", iters=40, batch=8, seed=2, kernel=kernel, callback=nudge)
            for kernel in ("numba", "numpy")]
    assert np.array_equal(runs[0].x, runs[1].x)
    untouched = mpiopt.minimize(problem, "intsgd", iters=40, batch=8, seed=2, kernel="numba")
    assert not np.array_equal(untouched.x, runs[0].x)
