"""No compression: one float Allreduce(SUM) of v in float64 (or float32), omega = 0."""

import numpy as np

from mpiopt.compressors.base import FLOAT_DTYPE, Compressor, all_finite, register


@register
class NoCompression(Compressor):
    """Full precision: v summed by one float Allreduce in ``float_dtype``."""

    name = "none"
    options = (FLOAT_DTYPE,)
    collective = "allreduce_float"

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        self._wire = self.xp.empty(dim, dtype=np.dtype(self.opts["float_dtype"]))
        self._local = None if self._wire.dtype == np.float64 else self.xp.empty_like(self._wire)
        """v rounded to the wire's float32, the local C(v) (a float64 wire sends v as it is)."""
        self._bits = 8 * self._wire.itemsize * dim

    def _sum(self, v, k: int):
        """v summed over ranks in the wire buffer; every rank stops together on a non-finite sum."""
        wire = self._wire
        wire[...] = v
        self.comm.allreduce_float(wire)
        if not all_finite(wire):
            self.fail(k, not all_finite(v))
        self.bits, self.clipped = self._bits, 0
        return wire

    def exchange(self, v, k, x, lr, out_mean, out_local=None):
        wire = self._sum(v, k)
        self.xp.multiply(wire, 1.0 / self.n, out=out_mean)
        if out_local is not None and self._local is None:
            out_local[...] = v
        elif out_local is not None:
            self._local[...] = v
            out_local[...] = self._local

    def exchange_update(self, v, k, x, lr, mean):
        """x -= wire * (lr / n): gradient descent's update, one multiply and one subtract."""
        wire = self._sum(v, k)
        wire *= lr / self.n
        x -= wire
