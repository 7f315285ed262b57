"""Quantizer kernels: Int(alpha * v) with counter-based rounding noise, and its decoding.

``mpiopt.kernels.numpy`` is the reference implementation (CPU, numpy). ``mpiopt.kernels.numba``
(optional dependency) and ``mpiopt.kernels.cupy`` (GPU) follow the same contract and reproduce its
noise and integers bit for bit; the exact formula is in ``mpiopt.kernels.numpy``'s docstring.

On the CPU the compressors use the numba kernel when numba is installed (it makes one pass where
numpy makes about twenty) and the vector has at least NUMBA_FROM coordinates, and the numpy one
otherwise; ``MPIOPT_KERNEL=numpy`` or ``=numba`` in the environment (or a compressor's ``kernel``
option) forces one. The choice changes speed and memory only, never an integer or an iterate.
"""

import os
from typing import Optional, Sequence

import numpy as np

from mpiopt.kernels.numpy import ROUNDINGS, Quantizer, int_bound, stream_key, uniform

KERNEL_ENV = "MPIOPT_KERNEL"
CPU_KERNELS = ("numba", "numpy")
NUMBA_FROM = 4096
"""Unless a kernel is asked for, vectors of fewer coordinates than this take the numpy kernel: there a
step costs a few microseconds more with it (VR-IntDIANA on a5a, 2 ranks, batch 160: 0.36 ms per
iteration with numpy, 0.40 with numba; IntSGD at d = 16: 17.1 and 12.8 us, sgd 9.5;
benchmarks/python_overhead.py), while importing numba and loading its compiled kernels costs each
process about 110 MB (a rank on a5a: 85 MB peak resident with the numpy kernel, 197 MB with numba's;
benchmarks/results/rss.json)."""


def cpu_kernel(name: Optional[str] = None, size: Optional[int] = None) -> str:
    """The CPU kernel to use: ``name``, else $MPIOPT_KERNEL, else numpy for a vector of ``size`` <
    NUMBA_FROM coordinates, else numba when it imports, else numpy.

    Raises ValueError for an unknown name and ImportError when numba is asked for but not installed."""
    chosen = name or os.environ.get(KERNEL_ENV) or None
    if chosen is not None and chosen not in CPU_KERNELS:
        raise ValueError(f"{KERNEL_ENV} must be one of {', '.join(CPU_KERNELS)}, got {chosen!r}")
    if chosen == "numpy" or (chosen is None and size is not None and size < NUMBA_FROM):
        return "numpy"
    from mpiopt.kernels import numba as numba_kernel

    if chosen == "numba" and not numba_kernel.AVAILABLE:
        raise ImportError(f"{KERNEL_ENV}=numba but numba is not installed (pip install numba)")
    if chosen is None:
        chosen = "numba" if numba_kernel.AVAILABLE else "numpy"
    return chosen


def cpu_quantizer(size: int, seed: int, worker: int, n_ranks: int = 1, rounding: str = "random",
                  kernel: Optional[str] = None, blocks: Optional[Sequence[int]] = None, layout=None):
    """A Quantizer of the kernel :func:`cpu_kernel` picks (same constructor and integers for both).

    ``blocks`` (alpha blocks' first coordinates) lets alpha be given per block to a kernel that takes
    it (``takes_blocks``: numba); the numpy kernel takes per-coordinate alphas and ignores them.
    ``layout`` (arrays in another order than the coordinates) needs the numba kernel."""
    if cpu_kernel(kernel) == "numba":
        from mpiopt.kernels.numba import Quantizer as NumbaQuantizer

        return NumbaQuantizer(size, seed, worker, n_ranks, rounding, blocks=blocks, layout=layout)
    _plain_layout_only(layout, "numpy")
    return Quantizer(size, seed, worker, n_ranks, rounding)


def _plain_layout_only(layout, kernel: str) -> None:
    if layout is not None:
        raise ValueError(f"the {kernel} kernel takes arrays in coordinate order only (a layout needs numba)")


def make_quantizer(xp, kernel: Optional[str], size: int, seed: int, worker: int, n_ranks: int = 1,
                   rounding: str = "random", blocks: Optional[Sequence[int]] = None, layout=None):
    """The quantizer for arrays of module ``xp``: numpy's go to the CPU ``kernel`` (numba / numpy;
    None picks as :func:`cpu_kernel`), any other module's (CuPy; the CuPy-rules module of the tests)
    to CuPy's kernel, which takes ``blocks`` too. All of them give the same integers.
    ``blocks`` and ``layout``: see :func:`cpu_quantizer`."""
    if xp is not np:
        from mpiopt.kernels.cupy import Quantizer as CupyQuantizer

        _plain_layout_only(layout, "CuPy")
        return CupyQuantizer(size, seed, worker, n_ranks, rounding, blocks=blocks, xp=xp)
    return cpu_quantizer(size, seed, worker, n_ranks, rounding, kernel, blocks, layout)


def warm_up(kernel: str) -> None:
    """Compile (or load from cache) a kernel's specializations before any timed step."""
    if kernel == "numba":
        from mpiopt.kernels.numba import warm_up as numba_warm_up

        numba_warm_up()


__all__ = ["CPU_KERNELS", "NUMBA_FROM", "make_quantizer", "warm_up", "KERNEL_ENV", "ROUNDINGS", "Quantizer", "cpu_kernel", "cpu_quantizer", "int_bound",
           "stream_key", "uniform"]
