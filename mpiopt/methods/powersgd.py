"""PowerSGD (Vogels et al., 2019): rank-r power-iteration compression with error feedback and warm start.

The d-vector is viewed as a near-square matrix (rows = ceil(sqrt(d)), cols = ceil(d / rows), zero
padding at the end). Each rank, per step (Algorithm 1 with Algorithm 2's error feedback):

    M_i = reshape(g_i) + E_i                         (E_i: this rank's error memory, padded shape)
    P   = Allreduce-sum_i (M_i Q)                    (float Allreduce 1; Q shared, warm-started)
    P^  = orthonormalize(P)                          (Householder QR: orthonormal even if P is rank deficient)
    Q_i = M_i^T P^
    E_i = M_i - P^ Q_i^T                             (local residual: what this rank's share leaves out)
    Q   = Allreduce-sum_i (Q_i) / n                  (float Allreduce 2; kept as next step's warm start)
    D   = P^ Q^T = mean_i P^ Q_i^T                   (the same on every rank)
    momentum (optional, lambda): m = lambda m + D;  x -= eta (D + m), else x -= eta D

Rank r is capped at min(rows, cols); at that cap the approximation is exact and E stays 0.
The initial Q is Gaussian from the generator all ranks share, so it is identical everywhere.
Wire per rank per step: r (rows + cols) floats of ``float_dtype``.
"""

import math

import numpy as np

from mpiopt.errors import InputError
from mpiopt.methods.base import Method, float_dtype


def matrix_shape(d: int):
    """(rows, cols) of the near-square matrix that holds d coordinates (rows * cols >= d)."""
    rows = max(1, math.isqrt(d - 1) + 1) if d > 0 else 1
    return rows, max(1, -(-d // rows))


def orthonormalize(P: np.ndarray) -> np.ndarray:
    """P overwritten by the orthonormal factor of its reduced QR decomposition (P = P^ R)."""
    P[...] = np.linalg.qr(P, mode="reduced")[0]
    return P


class PowerSGD(Method):
    """PowerSGD with rank ``rank``, error feedback, warm-started Q and optional momentum.

    State: ``e`` (this rank's error, rows * cols), ``q`` (the shared Q, cols x r), ``m`` (momentum).
    """

    name = "powersgd"
    OPTIONS = {"rank": 2, "momentum": 0.0, "float_dtype": "float64"}
    identical_iterates = True

    def __init__(self, ctx, **options):
        super().__init__(ctx, **options)
        if int(self.opts["rank"]) < 1:
            raise InputError(f"--rank must be >= 1, got {self.opts['rank']}", collective=True)
        if not 0.0 <= float(self.opts["momentum"]) < 1.0:
            raise InputError(f"--momentum must be in [0, 1), got {self.opts['momentum']}", collective=True)
        self._wire_dtype = float_dtype(self.opts["float_dtype"])
        self.shape = matrix_shape(ctx.problem.dim)
        self.r = min(int(self.opts["rank"]), *self.shape)
        """The rank actually used: ``rank`` capped at min(rows, cols)."""

    def default_lr(self) -> float:
        return 1.0 / (2.0 * self.ctx.L_max)

    def wire_bytes_per_step(self) -> int:
        rows, cols = self.shape
        return self.r * (rows + cols) * self._wire_dtype.itemsize

    def start(self, x: np.ndarray) -> None:
        rows, cols = self.shape
        r = self.r
        self.state = {
            "e": np.zeros(rows * cols),
            "q": self.ctx.shared_rng.standard_normal((cols, r)),
            "m": np.zeros(x.size),
        }
        self._M = np.zeros(rows * cols)
        self._g = self._M[: x.size]
        self._P = np.empty((rows, r))
        self._Qi = np.empty((cols, r))
        self._D = np.empty((rows, cols))
        self._finite = np.empty(rows * cols, dtype=bool)
        if self._wire_dtype == np.float64:
            self._P_wire, self._Q_wire = self._P, self._Qi
        else:
            self._P_wire = np.empty((rows, r), dtype=self._wire_dtype)
            self._Q_wire = np.empty((cols, r), dtype=self._wire_dtype)
        self._bits_per_step = 8 * self.wire_bytes_per_step()

    def _allreduce(self, local: np.ndarray, wire: np.ndarray) -> np.ndarray:
        if wire is not local:
            wire[...] = local
        self.ctx.comm.allreduce_float(wire)
        if wire is not local:
            local[...] = wire
        return local

    def step(self, x: np.ndarray, k: int) -> None:
        comm = self.ctx.comm
        rows, cols = self.shape
        e, Q = self.state["e"], self.state["q"]
        self.ctx.problem.stochastic_grad(x, self.sample(), out=self._g)
        Mflat = self._M
        Mflat[x.size:] = 0.0
        Mflat += e
        M = Mflat.reshape(rows, cols)
        P, Qi, D = self._P, self._Qi, self._D

        np.dot(M, Q, out=P)
        bad = not np.isfinite(Mflat, out=self._finite).all()
        if bad:
            P.fill(np.nan)
        self._allreduce(P, self._P_wire)
        if not np.isfinite(P).all():
            self.raise_non_finite(k, bad)
        orthonormalize(P)

        np.dot(M.T, P, out=Qi)
        np.dot(P, Qi.T, out=D)
        np.subtract(Mflat, D.reshape(-1), out=e)

        self._allreduce(Qi, self._Q_wire)
        Qi *= 1.0 / comm.size
        Q[...] = Qi
        self.info_bits += self._bits_per_step

        np.dot(P, Q.T, out=D)
        update = D.reshape(-1)[: x.size]
        lam = float(self.opts["momentum"])
        if lam:
            m = self.state["m"]
            m *= lam
            m += update
            update += m
        update *= self.lr
        x -= update
