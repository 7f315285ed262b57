"""powersgd: PowerSGD (Vogels et al., 2019), rank-r power-iteration compression with a warm start.

The d-vector is viewed as a near-square matrix (rows = ceil(sqrt(d)), cols = ceil(d / rows), zero
padding at the end). Per step (Algorithm 1)::

    P   = Allreduce-sum_i (M_i Q)          (float Allreduce 1; Q shared, warm-started)
    P^  = orthonormalize(P)                (Householder QR: orthonormal even if P is rank deficient)
    Q_i = M_i^T P^                         (this rank's own decoded value is P^ Q_i^T)
    Q   = Allreduce-sum_i (Q_i) / n        (float Allreduce 2; kept as the next step's warm start)
    mean = P^ Q^T                          (the same on every rank)

Rank r is capped at min(rows, cols); at that cap the approximation is exact. The initial Q is
Gaussian, drawn from a generator seeded by ``seed`` alone, so it is identical on every rank. Biased:
PowerSGD's error feedback is the residual memory of ``ef-sgd`` (the ``powersgd`` alias). Wire per
rank per step: r (rows + cols) floats of ``float_dtype``.
"""

import math

import numpy as np

from mpiopt.compressors.base import FLOAT_DTYPE, Compressor, Option, all_finite, positive_int, register


def matrix_shape(d: int):
    """(rows, cols) of the near-square matrix that holds d coordinates (rows * cols >= d)."""
    rows = max(1, math.isqrt(d - 1) + 1) if d > 0 else 1
    return rows, max(1, -(-d // rows))


@register
class PowerSGDCompressor(Compressor):
    """Rank-r factors P, Q in two float Allreduces."""

    name = "powersgd"
    unbiased = False
    collective = "allreduce_float"
    options = (Option("rank", 2, int, "rank r of the gradient approximation", valid=positive_int,
                      rule="a positive integer"), FLOAT_DTYPE)

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        xp = self.xp
        self.shape = rows, cols = matrix_shape(dim)
        self.r = r = min(int(self.opts["rank"]), rows, cols)
        """The rank actually used: ``rank`` capped at min(rows, cols)."""
        q0 = np.random.default_rng(np.random.SeedSequence([self.seed, 0x504F57])).standard_normal((cols, r))
        self.state = {"q": xp.asarray(q0)}
        self._M = xp.zeros(rows * cols)
        self._P = xp.empty((rows, r))
        self._Qi = xp.empty((cols, r))
        self._D = xp.empty((rows, cols))
        wire = np.dtype(self.opts["float_dtype"])
        self._P_wire = self._P if wire == np.float64 else xp.empty((rows, r), dtype=wire)
        self._Q_wire = self._Qi if wire == np.float64 else xp.empty((cols, r), dtype=wire)
        self._bits = 8 * r * (rows + cols) * wire.itemsize

    def _allreduce(self, local, wire):
        if wire is not local:
            wire[...] = local
        self.comm.allreduce_float(wire)
        if wire is not local:
            local[...] = wire
        return local

    def exchange(self, v, k, x, lr, out_mean, out_local=None):
        xp, d = self.xp, self.dim
        rows, cols = self.shape
        Q, P, Qi, D = self.state["q"], self._P, self._Qi, self._D
        self._M[:d] = v
        M = self._M.reshape(rows, cols)
        xp.dot(M, Q, out=P)
        bad = not all_finite(v)
        if bad:
            P.fill(math.nan)
        self._allreduce(P, self._P_wire)
        if not all_finite(P):
            self.fail(k, bad)
        P[...] = xp.linalg.qr(P, mode="reduced")[0]
        xp.dot(M.T, P, out=Qi)
        if out_local is not None:
            xp.dot(P, Qi.T, out=D)
            out_local[...] = D.reshape(-1)[:d]
        self._allreduce(Qi, self._Q_wire)
        Qi *= 1.0 / self.n
        Q[...] = Qi
        xp.dot(P, Q.T, out=D)
        out_mean[...] = D.reshape(-1)[:d]
        self.bits, self.clipped = self._bits, 0
