"""qsgd: QSGD (Alistarh et al., 2017) with s levels. v -> ||v||_2 sign(v_j) xi_j / s with
xi_j = Int(s |v_j| / ||v||_2) by randomized rounding (unbiased; omega = min(d / s^2, sqrt(d) / s)).

Wire format per rank, by Allgather: the signed levels as int8 (s <= 127) or int16 (s <= 32767) and
the norm as a float64 in a header (NaN: this rank's v was not finite).
"""

import math

import numpy as np

from mpiopt.compressors.base import KERNEL, GatherCompressor, Option, info_bits_int, register


@register
class QSGDCompressor(GatherCompressor):
    """s levels per vector: the norm and one signed level per coordinate."""

    name = "qsgd"
    options = (Option("levels", 127, int, "number of levels s (127: int8 on the wire; up to 32767, int16)",
                      valid=lambda s: isinstance(s, (int, np.integer)) and 1 <= s <= 32767,
                      rule="an integer in [1, 32767]"), KERNEL)

    @classmethod
    def omega(cls, dim, opts):
        s = opts["levels"]
        return min(dim / s ** 2, math.sqrt(dim) / s)

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        self.s = int(self.opts["levels"])
        self.dtype = np.dtype(np.int8 if self.s <= 127 else np.int16)
        self.setup_gather(self.dtype, dim + 8 // self.dtype.itemsize)
        self.quant = self.quantizer(dim)
        self._a = self.xp.empty(dim)
        self._signed = self.xp.empty(dim)
        self._norms = self.xp.empty((self.n, 1))

    def encode(self, v, k):
        xp, d, q, s = self.xp, self.dim, self.quant, self.s
        a = xp.abs(v, out=self._a)
        norm = float(xp.sqrt(xp.dot(a, a))) if d else 0.0
        finite = math.isfinite(norm)
        if not finite:
            a[...] = 0.0
        q.round(a, s / norm if finite and norm > 0 else 1.0, k)
        levels = q.rounded  # Int(s |v_j| / ||v||) in [0, s] (s + 1 only by a rounding slip); read-only
        if q.max_abs > s:
            self.clipped = int(xp.count_nonzero(levels > s))
            levels = xp.minimum(levels, s, out=self._signed)
        signed = xp.copysign(levels, v, out=self._signed)
        xp.copyto(self.send[:d], signed, casting="unsafe")
        self.send[d:].view(np.float64)[0] = norm if finite and norm > 0 else (0.0 if finite else math.nan)
        return finite

    def decode_rows(self, recv, vals):
        xp, d = self.xp, self.dim
        norms = xp.ascontiguousarray(recv[:, d:]).view(np.float64)
        if not xp.isfinite(norms).all():
            return False
        xp.multiply(norms, 1.0 / self.s, out=self._norms)
        xp.multiply(recv[:, :d], self._norms, out=vals)
        return True

    def message_bits(self):
        return info_bits_int(self.dim, self.s) + 64
