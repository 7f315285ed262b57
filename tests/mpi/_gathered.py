"""Helpers of the mpiexec check scripts: every rank's vector gathered, and whether all ranks agree."""

import numpy as np
from mpi4py import MPI

world = MPI.COMM_WORLD


def gather_rows(v: np.ndarray) -> np.ndarray:
    """Every rank's ``v`` as the rows of one array, in rank order (on every rank)."""
    rows = np.empty((world.Get_size(), v.size), dtype=v.dtype)
    world.Allgather(np.ascontiguousarray(v), rows)
    return rows


def same_everywhere(v: np.ndarray) -> bool:
    """Whether ``v`` is bitwise the same on every rank (compared as float64)."""
    rows = gather_rows(np.asarray(v, dtype=np.float64))
    return bool((rows == rows[0]).all())
