"""IntSGD's scaling factor alpha as one pure function, and the block layouts it is computed over.

Alg. 1 (one block) and Alg. 2 (blocks l of d_l coordinates, e.g. one per layer) of the IntSGD paper:
alpha_l = eta sqrt(d_l) / sqrt(2 n r_l + eta^2 (d_l / d) eps^2), where r_l is the running average of
the block's ||x^k - x^{k-1}||^2. Every input is identical on all ranks, so alpha is too and it is
never sent; the current step size is passed at every call, so LR schedules are followed.
"""

import math
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from mpiopt.compressors.base import bad_option


def block_constants(sizes: np.ndarray, eps: float) -> Tuple[np.ndarray, np.ndarray]:
    """sqrt(d_l) and eps^2 d_l / d: the parts of Alg. 2's alpha that are the same at every step."""
    return np.sqrt(sizes), (eps ** 2) * sizes / max(float(sizes.sum()), 1.0)


def adaptive_alpha(lr: float, r: np.ndarray, sizes: np.ndarray, n: int, eps: float,
                   out: Optional[np.ndarray] = None,
                   constants: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> Union[float, np.ndarray]:
    """alpha per block for step size ``lr``, running averages ``r`` and block sizes ``sizes`` (float64).

    One block gives a Python float, evaluated as lr sqrt(d) / sqrt(2 n r + (lr eps)^2); several give
    an array (into ``out`` when given), evaluated as lr (sqrt(d_l) / sqrt(2 n r_l + lr^2 eps^2 d_l / d)),
    with ``constants`` = :func:`block_constants` of ``sizes`` and ``eps`` when the caller keeps them.
    Given ``constants``, ``sizes`` may be some of a layout's blocks (one DDP bucket's), however few:
    the array form then even for one. The two evaluation orders are the ones every stored trajectory
    was computed with.
    """
    if len(sizes) == 1 and constants is None:
        return one_block_alpha(lr, math.sqrt(float(sizes[0])), float(r[0]), n, eps)
    sqrt_sizes, eps_share = block_constants(sizes, eps) if constants is None else constants
    a = np.empty(len(sizes)) if out is None else out
    np.multiply(r, 2.0 * n, out=a)
    a += (lr * lr) * eps_share
    np.sqrt(a, out=a)
    np.divide(sqrt_sizes, a, out=a)
    a *= lr
    return a


def one_block_alpha(lr: float, sqrt_d: float, r: float, n: int, eps: float) -> float:
    """Alg. 1's alpha (one block of d coordinates, ``sqrt_d`` = sqrt(d)) in Python floats, in the
    evaluation order of :func:`adaptive_alpha`'s one block."""
    return lr * sqrt_d / math.sqrt(2.0 * n * r + (lr * eps) ** 2)


def block_layout(d: int, block_size: Optional[int], starts: Optional[Sequence[int]]) -> np.ndarray:
    """The first coordinate of each alpha block: ``starts`` as given (e.g. one block per layer),
    else chunks of ``block_size``, else one block of all d coordinates."""
    if starts is None:
        return np.arange(0, d, block_size if block_size else max(d, 1), dtype=np.intp)
    starts = np.asarray(starts, dtype=np.intp)
    if starts.ndim != 1 or not starts.size or starts[0] != 0 or (np.diff(starts) <= 0).any() or starts[-1] >= d:
        raise bad_option(f"block_starts must ascend strictly from 0 below d = {d}, got {starts.tolist()}")
    return starts
