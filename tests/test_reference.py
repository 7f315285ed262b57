"""mpiopt.reference: x*, f* and L agree with independent computations (scikit-learn, numpy SVD)."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize as sk_normalize

from mpiopt.data import load_libsvm, load_shard, read_meta
from mpiopt.problems.logistic import LogisticProblem
from mpiopt.reference import solve_logistic

A5A_L2, A5A_WORKERS = 5e-4, 12
"""How conftest's a5a_shards fixture was made."""


def _normalized(path, n_features, n_workers=1):
    """The matrix preprocess builds, computed independently: unit rows, truncated to a multiple of n."""
    X, y = load_libsvm(path, n_features)
    keep = X.shape[0] // n_workers * n_workers
    return sk_normalize(X)[:keep], y[:keep]


def _sklearn_objective(A, b, l2):
    """Our objective at scikit-learn's minimizer of the same function (C = 1/(l2 N), no intercept)."""
    model = LogisticRegression(C=1.0 / (l2 * A.shape[0]), fit_intercept=False, tol=1e-12, max_iter=10000,
                               solver="newton-cg")
    model.fit(A, b)
    coef = model.coef_.ravel()
    return LogisticProblem(A, b, l2).loss(coef), coef


def test_a5a_f_star_matches_scikit_learn(a5a_shards, a5a_path):
    meta = read_meta(a5a_shards)
    A, b = _normalized(a5a_path, 123, A5A_WORKERS)
    f_sklearn, coef = _sklearn_objective(A, b, A5A_L2)
    assert abs(meta["f_star"] - f_sklearn) <= 1e-9 * abs(f_sklearn)
    assert meta["f_star"] <= f_sklearn + 1e-15
    assert meta["grad_norm_at_x_star"] <= 1e-10
    assert np.linalg.norm(np.array(meta["x_star"]) - coef) <= 1e-5 * np.linalg.norm(coef)


def test_a5a_meta_is_consistent_with_the_shards(a5a_shards):
    """x* read back from JSON gives f* and a tiny gradient on the global objective over all shards."""
    meta = read_meta(a5a_shards)
    parts = [load_shard(a5a_shards, k, A5A_WORKERS) for k in range(A5A_WORKERS)]
    problem = LogisticProblem(sp.vstack([A for A, _, _ in parts]), np.concatenate([b for _, b, _ in parts]),
                              meta["l2"])
    x_star = np.array(meta["x_star"])
    assert problem.loss(x_star) == meta["f_star"]
    assert np.linalg.norm(problem.grad(x_star)) == pytest.approx(meta["grad_norm_at_x_star"], rel=1e-6, abs=1e-15)


def test_mushrooms_f_star_matches_scikit_learn(libsvm_dir):
    path = libsvm_dir / "mushrooms"
    if not path.is_file():
        pytest.skip(f"mushrooms not found: {path}")
    A, b = _normalized(path, 112)
    x_star, f_star, grad_norm = solve_logistic(A, b, 6e-4)
    f_sklearn, _ = _sklearn_objective(A, b, 6e-4)
    assert abs(f_star - f_sklearn) <= 1e-9 * abs(f_sklearn)
    assert grad_norm <= 1e-10
    assert LogisticProblem(A, b, 6e-4).loss(x_star) == f_star


def test_newton_cg_agrees_with_dense_newton(a5a_path):
    A, b = _normalized(a5a_path, 123)
    x_dense, f_dense, _ = solve_logistic(A, b, A5A_L2)
    x_cg, f_cg, grad_norm = solve_logistic(A, b, A5A_L2, dense_max_dim=0)
    assert grad_norm <= 1e-10
    assert f_cg == pytest.approx(f_dense, rel=1e-14)
    assert np.linalg.norm(x_cg - x_dense) <= 1e-8 * np.linalg.norm(x_dense)


def test_smoothness_constants_match_an_svd(a5a_shards, a5a_path):
    meta = read_meta(a5a_shards)
    A, _ = _normalized(a5a_path, 123, A5A_WORKERS)
    dense = A.toarray()
    sigma = np.linalg.svd(dense, compute_uv=False)[0]
    assert meta["L"] == pytest.approx(0.25 * sigma ** 2 / dense.shape[0] + A5A_L2, rel=1e-12)
    m = dense.shape[0] // A5A_WORKERS
    for k, L_k in enumerate(meta["L_workers"]):
        sigma_k = np.linalg.svd(dense[k * m: (k + 1) * m], compute_uv=False)[0]
        assert L_k == pytest.approx(0.25 * sigma_k ** 2 / m + A5A_L2, rel=1e-12)


def test_max_iter_and_tolerance_are_respected(a5a_path):
    A, b = _normalized(a5a_path, 123)
    _, _, loose = solve_logistic(A, b, A5A_L2, tol=1e-3)
    _, _, one_step = solve_logistic(A, b, A5A_L2, max_iter=1)
    assert 1e-10 < loose <= 1e-3
    assert one_step > 1e-6


def test_needs_positive_l2():
    with pytest.raises(ValueError, match="l2 must be > 0"):
        solve_logistic(sp.csr_matrix(np.eye(2)), np.array([1.0, -1.0]), 0.0)
