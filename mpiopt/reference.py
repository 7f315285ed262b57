"""The reference solution x*, f* of the global logistic objective, to near machine precision.

Traces report f(x) - f* and ||x - x*||^2, so f* must be far more accurate than any method we test:
we run Newton's method (quadratic convergence) until the gradient norm reaches ``tol`` or stops
decreasing, the floor set by floating-point rounding, and report the norm actually reached.
"""

import math
from typing import Optional, Tuple

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import LinearOperator, cg

from mpiopt.problems.logistic import LogisticProblem

DENSE_MAX_DIM = 2000
"""Up to this many features the Hessian is formed and factored (Cholesky); above, Newton-CG."""

_PATIENCE = 3
"""Iterations without a new smallest gradient norm after which we stop: rounding noise dominates."""

_ARMIJO = 1e-4
_MIN_STEP = 2.0 ** -40
_CG_MAX_ITER = 2000


def solve_logistic(A, b: np.ndarray, l2: float, tol: float = 1e-12, max_iter: int = 100, *,
                   dense_max_dim: int = DENSE_MAX_DIM) -> Tuple[np.ndarray, float, float]:
    """Minimize f(x) = (1/N) sum_j log(1 + exp(-b_j a_j^T x)) + (l2/2) ||x||^2 over all N rows of A.

    Damped Newton from x = 0: directions from a Cholesky solve with the exact Hessian when
    d <= ``dense_max_dim``, else from conjugate gradients on Hessian-vector products (Newton-CG).
    Stops once ||grad f|| <= ``tol``, after ``max_iter`` iterations, or when no step reduces f or the
    gradient norm any more. Returns (x*, f(x*), ||grad f(x*)||) for the iterate with the smallest
    gradient norm seen. Needs l2 > 0 (a strongly convex f with a unique minimizer).
    """
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0 for a unique minimizer, got {l2!r}")
    problem = LogisticProblem(A, b, l2)
    direction = _cholesky_direction if problem.dim <= dense_max_dim else _cg_direction
    x, g = np.zeros(problem.dim), np.empty(problem.dim)
    f = problem.loss_and_grad(x, g)
    gnorm = float(np.linalg.norm(g))
    best, stale = (x, f, gnorm), 0
    for _ in range(max_iter):
        if best[2] <= tol or stale >= _PATIENCE:
            break
        step = _line_search(problem, x, f, g, gnorm, direction(problem, x, g, gnorm))
        if step is None:
            break
        x, f, g, gnorm = step
        if gnorm < best[2]:
            best, stale = (x, f, gnorm), 0
        else:
            stale += 1
    return best


def _cholesky_direction(problem: LogisticProblem, x: np.ndarray, g: np.ndarray, gnorm: float) -> np.ndarray:
    """The Newton direction -H^{-1} g from the exact dense Hessian (positive definite since l2 > 0)."""
    factor = scipy.linalg.cho_factor(problem.hessian(x), overwrite_a=True, check_finite=False)
    return -scipy.linalg.cho_solve(factor, g, check_finite=False)


def _cg_direction(problem: LogisticProblem, x: np.ndarray, g: np.ndarray, gnorm: float) -> np.ndarray:
    """An inexact Newton direction: CG on H p = -g to relative residual min(1/2, sqrt(||g||)),
    the forcing term that keeps Newton-CG superlinear without solving far-off systems exactly."""
    hessian = LinearOperator((problem.dim, problem.dim), matvec=lambda v: problem.hessp(x, v), dtype=np.float64)
    p, _ = cg(hessian, -g, rtol=min(0.5, math.sqrt(gnorm)), maxiter=_CG_MAX_ITER)
    return p


def _line_search(problem: LogisticProblem, x: np.ndarray, f: float, g: np.ndarray, gnorm: float,
                 p: np.ndarray) -> Optional[Tuple[np.ndarray, float, np.ndarray, float]]:
    """Backtrack from the full Newton step; returns (x, f, grad, ||grad||) or None if nothing helps.

    A step is taken when it passes the Armijo test on f, or, once f is flat to rounding (near x*,
    where f's changes drop below its last bit but the gradient's do not), when it reduces ||grad f||.
    """
    slope = float(g @ p)
    rounding = 8 * np.finfo(float).eps * max(1.0, abs(f))
    g_new = np.empty_like(g)
    t = 1.0
    while t >= _MIN_STEP:
        x_new = x + t * p
        f_new = problem.loss_and_grad(x_new, g_new)
        gnorm_new = float(np.linalg.norm(g_new))
        if (f_new <= f + _ARMIJO * t * slope and f_new < f) or (gnorm_new < gnorm and f_new <= f + rounding):
            return x_new, f_new, g_new, gnorm_new
        t *= 0.5
    return None
