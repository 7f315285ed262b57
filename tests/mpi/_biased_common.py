"""Shared by the ``_biased_*.py`` helpers: this rank's contiguous, row-normalized share of a LIBSVM file."""

import numpy as np
from sklearn.datasets import load_svmlight_file

from mpiopt.problems.logistic import LogisticProblem

L2 = 5e-4
N_FEATURES = 123


def local_problem(path: str, rank: int, size: int) -> LogisticProblem:
    """Rows split contiguously over the ranks, each row scaled to unit norm, labels in {-1, +1}."""
    A, b = load_svmlight_file(path, n_features=N_FEATURES)
    A = A.tocsr()
    norms = np.sqrt(np.asarray(A.multiply(A).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    A = A.multiply(1.0 / norms[:, None]).tocsr()
    b = np.where(b > 0, 1.0, -1.0)
    rows = np.array_split(np.arange(A.shape[0]), size)[rank]
    return LogisticProblem(A[rows], b[rows], L2)


def check_same_on_all_ranks(comm, x: np.ndarray) -> bool:
    """True when x is bitwise the same on every rank (gathered with a buffer Allgather)."""
    got = np.empty((comm.Get_size(), x.size))
    comm.Allgather(np.ascontiguousarray(x, dtype=np.float64), got)
    return bool((got == got[0]).all())
