"""``mpiexec -n N python _api_safety.py CHECK OUT.json``: the Python API's traps on every rank.

Checks (rank 0 writes ``{name: result}`` to OUT.json, results AND-ed over ranks where they are booleans):

* ``returns``: a least-squares problem whose gradients return new arrays (ignoring ``out=``) gives
  bitwise the x of the same problem filling ``out``, for every method in ``METHODS``;
* ``dim``: rank r's problem has dim 5 + r; ``minimize`` raises one InputError naming the ranks;
* ``torch``: models seeded with the rank are equal on every rank once the optimizer is built, and
  after three steps.

Imported by the one-process tests too (``LeastSquares``, ``same_x``).
"""

import json
import sys
from typing import Dict, Optional

import numpy as np
from mpi4py import MPI

import mpiopt
from mpiopt.errors import InputError

METHODS = ("gd", "l-svrg", "vr-diana", "vr-intdiana", "powersgd")


class LeastSquares:
    """f_i(x) = ||A x - b||^2 / (2 m); ``fills_out=False`` returns new arrays and ignores ``out``."""

    def __init__(self, A: np.ndarray, b: np.ndarray, fills_out: bool):
        self.A, self.b, self.fills_out = A, b, fills_out
        self.n_samples, self.dim = A.shape

    def loss(self, x: np.ndarray) -> float:
        r = self.A @ x - self.b
        return 0.5 * float(r @ r) / self.n_samples

    def _grad(self, A: np.ndarray, b: np.ndarray, x: np.ndarray, out: Optional[np.ndarray]) -> np.ndarray:
        g = A.T @ (A @ x - b) / len(b)
        if self.fills_out and out is not None:
            out[...] = g
            return out
        return g

    def grad(self, x, out=None):
        return self._grad(self.A, self.b, x, out)

    def stochastic_grad(self, x, idx, out=None):
        return self._grad(self.A[idx], self.b[idx], x, out)

    def smoothness(self) -> float:
        return float(np.linalg.eigvalsh(self.A.T @ self.A / self.n_samples)[-1])


def data(rank: int, m: int = 60, d: int = 8):
    rng = np.random.default_rng(rank)
    A = rng.standard_normal((m, d))
    return A, A @ np.ones(d) + 0.1 * rng.standard_normal(m)


def same_x(method: str, rank: int, iters: int = 200) -> bool:
    """Bitwise the same final x whether the problem fills ``out`` or returns new arrays."""
    A, b = data(rank)
    batch = {} if method == "gd" else {"batch": 5}  # gd uses the full local gradient
    runs = [mpiopt.minimize(LeastSquares(A, b, fills), method, iters=iters, lr=0.02, **batch)
            for fills in (True, False)]
    return bool(np.array_equal(runs[0].x, runs[1].x)) and bool(np.isfinite(runs[0].fun))


def check_returns(rank: int) -> Dict[str, bool]:
    return {f"returns/{m}": same_x(m, rank) for m in METHODS}


def check_dim(rank: int) -> Dict[str, str]:
    A, b = data(rank, d=5 + rank)
    try:
        mpiopt.minimize(LeastSquares(A, b, True), "gd", iters=1)
    except InputError as exc:
        return {"dim": str(exc), "dim/collective": exc.collective}
    return {"dim": "no error"}


def check_torch(rank: int) -> Dict[str, bool]:
    import torch

    import mpiopt.torch as mt

    torch.manual_seed(rank)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    opt = mt.IntSGD(model.parameters(), lr=0.1)
    built = equal_on_all_ranks(model)
    X, y = torch.randn(16, 6), torch.randn(16, 1)  # different data per rank
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(X), y).backward()
        opt.step()
    return {"torch/built": built, "torch/stepped": equal_on_all_ranks(model)}


def equal_on_all_ranks(model) -> bool:
    """The flattened parameters are bitwise those of rank 0."""
    flat = np.concatenate([p.detach().numpy().ravel() for p in model.parameters()])
    return bool(np.array_equal(flat, MPI.COMM_WORLD.bcast(flat, root=0)))


CHECKS = {"returns": check_returns, "dim": check_dim, "torch": check_torch}


def main(check: str, out: str) -> None:
    comm = MPI.COMM_WORLD
    mine = CHECKS[check](comm.rank)
    gathered = comm.gather(mine, root=0)
    if comm.rank == 0:
        report = {k: (all(r[k] for r in gathered) if isinstance(v, bool) else v) for k, v in mine.items()}
        report["n_ranks"] = comm.size
        with open(out, "w") as fh:
            json.dump(report, fh)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
