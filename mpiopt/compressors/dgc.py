"""dgc: Deep Gradient Compression's sparsifier (Lin et al., 2018) -- a sampled top-k threshold with
sparsity warm-up.

Wire: one int32 count per rank (4 bytes; -1 signals a non-finite v), then that rank's c
(value, int32 index) pairs by Allgatherv -- 4 + 12 c bytes with float64 values (4 + 8 c with
float32). The count varies: the threshold is the ceil(k s / d)-th largest of s coordinates of |v|
drawn uniformly with replacement (exact when s would be all of v), every |v| >= thr is sent, cut to
the k largest when that is more than k. The density k/d decays geometrically from
``warmup_density`` to ``density`` over the first ``warmup_iters`` iterations (DGC's warm-up).

The sampled coordinates come from counter-based noise (a pure function of (seed, worker, step,
coordinate) with a seed derived from the run's, independent of the rounding noise), so DGC draws the
same minibatches as SGD for the same seed and keeps no generator state. Momentum correction and
masking are DGC's *memory* (``mpiopt.methods.memory``), which reads ``sent_indices`` after each
exchange. Biased (omega 0).
"""

import math

import numpy as np

from mpiopt.compressors.base import FLOAT_DTYPE, Option, register
from mpiopt.compressors.sparse import DENSITY, SparseCompressor, count_for, largest
from mpiopt.kernels import make_quantizer
from mpiopt.kernels.numpy import MASK, mix64

SAMPLE_STREAM = int.from_bytes(b"dgc-samp", "little")
"""Mixed into the run's seed to key the sampling noise apart from the rounding noise."""


def non_negative_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0


WARMUP_ITERS = Option("warmup_iters", 100, int, "iterations of the sparsity warm-up (0: none)",
                      valid=non_negative_int, rule="an integer >= 0")
WARMUP_DENSITY = Option("warmup_density", 0.25, float, "density at the start of the warm-up",
                        valid=DENSITY.valid, rule=DENSITY.rule)


def density_at(k: int, density: float, warmup_iters: int, warmup_density: float) -> float:
    """The target density at iteration k (0-based): geometric decay from warmup_density to density."""
    start = max(warmup_density, density)
    if k >= warmup_iters or start == density:
        return density
    return start * (density / start) ** (k / warmup_iters)


def sample_size(d: int, density: float, ratio: float = 0.01, min_hits: int = 20) -> int:
    """Coordinates sampled to estimate the threshold: ``ratio`` of d, and enough that about
    ``min_hits`` of them lie above the target threshold; d (exact top-k) when that is all of v."""
    return min(d, max(math.ceil(ratio * d), math.ceil(min_hits / density)))


@register
class DGCSparsifier(SparseCompressor):
    """DGC's sampled-threshold top-k with sparsity warm-up; a variable count per rank."""

    name = "dgc"
    options = (DENSITY, WARMUP_ITERS, WARMUP_DENSITY, FLOAT_DTYPE)
    fixed_count = False

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        xp, s = self.xp, sample_size(dim, float(self.opts["density"]))
        self._sample = xp.empty(s)
        self._where = xp.empty(s)
        self._where_int = xp.empty(s, dtype=np.intp)
        self._mask = xp.empty(dim, dtype=bool)
        seed = mix64((self.seed & MASK) ^ SAMPLE_STREAM)
        self._noise = make_quantizer(xp, "numpy", s, seed, self.worker, self.n) if s < dim else None

    def count(self, k):
        """k_t: the pairs aimed at at iteration k (the warm-up's density times d)."""
        o = self.opts
        density = density_at(k, float(o["density"]), int(o["warmup_iters"]), float(o["warmup_density"]))
        return count_for(density, self.dim)

    def max_count(self):
        return max(self.count(0), self.count(int(self.opts["warmup_iters"])))

    def select(self, absv, k):
        """Indices (ascending) of at most count(k) coordinates of largest |v|, by a sampled threshold."""
        xp, d, c, sample = self.xp, self.dim, self.count(k), self._sample
        s = sample.size
        if self._noise is None:
            sample[...] = absv
            hits = c
        else:
            xp.multiply(self._noise.noise(k), d, out=self._where)
            self._where_int[...] = self._where
            xp.minimum(self._where_int, d - 1, out=self._where_int)
            xp.take(absv, self._where_int, out=sample)
            hits = min(s, max(1, math.ceil(c * s / d)))
        sample.partition(s - hits)
        chosen = xp.flatnonzero(xp.greater_equal(absv, sample[s - hits], out=self._mask))
        if chosen.size > c:
            chosen = chosen[largest(xp, absv[chosen], c, self._scratch)]
        return chosen
