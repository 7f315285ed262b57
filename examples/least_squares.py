"""A custom problem with mpiopt's Python API: least squares, several methods, x* from a direct solve.

    mpiexec -n 4 python examples/least_squares.py        # or: python examples/least_squares.py

Every rank builds its own shard (A_i, b_i) of a regression problem; the global objective is
f(x) = (1/n) sum_i ||A_i x - b_i||^2 / (2 m). A problem is any object with the members of
mpiopt.problems.Problem; this one has the optional loss_and_grad and sample_smoothness too.
x* comes from the normal equations (sum_i A_i^T A_i) x* = sum_i A_i^T b_i, summed over the ranks, and
is passed as x_star so every method stops at the same accuracy ||x - x*||^2 <= tol.
"""

from typing import Optional, Tuple

import numpy as np
from mpi4py import MPI

import mpiopt

ROWS, DIM = 400, 50
METHODS = ("gd", "l-svrg", "vr-diana", "vr-intdiana")


class LeastSquares:
    """f_i(x) = ||A x - b||^2 / (2 m) on this rank's m rows."""

    def __init__(self, A: np.ndarray, b: np.ndarray):
        self.A, self.b = A, b
        self.n_samples, self.dim = A.shape
        self._residual = np.empty(self.n_samples)

    def loss(self, x: np.ndarray) -> float:
        r = self.A @ x - self.b
        return 0.5 * float(r @ r) / self.n_samples

    def grad(self, x: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        r = np.subtract(self.A @ x, self.b, out=self._residual)
        return np.divide(self.A.T @ r, self.n_samples, out=out)  # out=None: a new array

    def stochastic_grad(self, x: np.ndarray, idx: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        rows = self.A[idx]
        return np.divide(rows.T @ (rows @ x - self.b[idx]), len(idx), out=out)

    def loss_and_grad(self, x: np.ndarray, out: np.ndarray) -> float:
        self.grad(x, out=out)  # leaves the residual in self._residual
        return 0.5 * float(self._residual @ self._residual) / self.n_samples

    def smoothness(self) -> float:
        """L_i: the largest eigenvalue of A^T A / m."""
        return float(np.linalg.eigvalsh(self.A.T @ self.A / self.n_samples)[-1])

    def sample_smoothness(self) -> float:
        """max_j ||a_j||^2: one row's smoothness constant (sets the VR methods' minibatch step)."""
        return float(np.einsum("ij,ij->i", self.A, self.A).max())


def make_shard(rank: int) -> Tuple[np.ndarray, np.ndarray]:
    """Rank-dependent rows (heterogeneous shards) around one common model."""
    rng = np.random.default_rng(rank)
    A = rng.standard_normal((ROWS, DIM)) * (1.0 + 0.5 * rank)
    x_true = np.linspace(-1.0, 1.0, DIM)
    return A, A @ x_true + 0.1 * rng.standard_normal(ROWS)


def solve_directly(problem: LeastSquares, comm: MPI.Comm) -> Tuple[np.ndarray, float]:
    """x* from the normal equations summed over the ranks, and f* = f(x*) averaged over them."""
    gram = comm.allreduce(problem.A.T @ problem.A)
    rhs = comm.allreduce(problem.A.T @ problem.b)
    x_star = np.linalg.solve(gram, rhs)
    return x_star, comm.allreduce(problem.loss(x_star)) / comm.size


def main() -> None:
    comm = MPI.COMM_WORLD
    problem = LeastSquares(*make_shard(comm.rank))
    x_star, f_star = solve_directly(problem, comm)
    if comm.rank == 0:
        print(f"least squares on {comm.size} rank(s): {ROWS} rows x {DIM} per rank, f* = {f_star:.6f}")
        print(f"{'method':12s} {'status':9s} {'iterations':>10s} {'||x - x*||^2':>12s} {'f - f*':>10s} "
              f"{'bytes/rank':>10s}")
    for method in METHODS:
        batch = {} if method == "gd" else {"batch": 10}  # gd uses the full local gradient
        res = mpiopt.minimize(problem, method, iters=5000, tol=1e-10, x_star=x_star, f_star=f_star, **batch)
        h = res.trace["history"]
        if comm.rank == 0:
            print(f"{method:12s} {res.status:9s} {res.nit:10d} {h['dist_sq'][-1]:12.2e} {h['f_gap'][-1]:10.2e} "
                  f"{h['wire_bytes'][-1]:10d}")


if __name__ == "__main__":
    main()
