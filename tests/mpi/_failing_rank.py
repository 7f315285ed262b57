"""``mpiexec -n N python _failing_rank.py CASE``: one rank fails inside ``mpiopt.minimize``.

* ``grad``: rank 1's ``stochastic_grad`` raises ValueError at its third call (outside any collective);
* ``callback``: rank 0's callback raises at iteration 5;
* ``missing``: rank 1's problem has no ``stochastic_grad``; every rank prints what it caught.

A rank that gets past ``minimize`` prints ``rank R finished``.
"""

import sys

import numpy as np
from mpi4py import MPI

import mpiopt
from mpiopt.errors import InputError

RANK = MPI.COMM_WORLD.Get_rank()


class Ridge:
    """f_i(x) = ||A x - b||^2 / (2 m) + ||x||^2 / 2 on this rank's rows."""

    def __init__(self, rank: int):
        rng = np.random.default_rng(rank)
        self.A = rng.standard_normal((40, 5))
        self.b = self.A @ np.ones(5)
        self.n_samples, self.dim = self.A.shape
        self.calls = 0

    def loss(self, x):
        r = self.A @ x - self.b
        return 0.5 * float(r @ r) / self.n_samples + 0.5 * float(x @ x)

    def grad(self, x, out=None):
        return self.A.T @ (self.A @ x - self.b) / self.n_samples + x

    def stochastic_grad(self, x, idx, out=None):
        self.calls += 1
        if CASE == "grad" and RANK == 1 and self.calls == 3:
            raise ValueError("rank 1's data is broken")
        rows = self.A[idx]
        return rows.T @ (rows @ x - self.b[idx]) / len(idx) + x

    def smoothness(self):
        return float(np.linalg.eigvalsh(self.A.T @ self.A / self.n_samples)[-1]) + 1.0


class NoStochastic(Ridge):
    stochastic_grad = None


def stop_on_rank_0(k, x):
    if RANK == 0 and k == 5:
        raise RuntimeError("callback failed on rank 0")
    return False


def main() -> None:
    problem = NoStochastic(RANK) if CASE == "missing" and RANK == 1 else Ridge(RANK)
    callback = stop_on_rank_0 if CASE == "callback" else None
    try:
        mpiopt.minimize(problem, "sgd", iters=200, batch=4, callback=callback)
    except InputError as exc:
        print(f"rank {RANK} caught InputError (collective={exc.collective}): {exc}", flush=True)
        return
    print(f"rank {RANK} finished", flush=True)


if __name__ == "__main__":
    CASE = sys.argv[1]
    main()
