"""fp16: v / n cast to IEEE half precision, summed by one float16 Allreduce, decoded to float64.

Wire: d float16 values per rank (2 d bytes), one ``allreduce_float`` (MPICH sums float16; mpi4py maps
the type). This is what PyTorch DDP users compare against (torch's ``fp16_compress_hook``): each rank
divides by n *before* the cast, so the sum of n values of at most 65504 / n each cannot overflow.
Rounding to nearest is biased (omega 0, not usable by DIANA). The sum is taken in the MPI library's
order, like the uncompressed float Allreduce, so its bits are the same on every rank but may depend
on the rank order. A non-finite v, or a |v / n| beyond float16's range, reaches every rank as a
non-finite sum, and every rank stops together.
"""

import numpy as np

from mpiopt.compressors.base import Compressor, all_finite, register

HALF = np.dtype(np.float16)


@register
class FP16Compressor(Compressor):
    """C(v) = n * fp16(v / n): half precision, 16 bits a coordinate, one float16 Allreduce."""

    name = "fp16"
    unbiased = False
    collective = "allreduce_float"

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        self._scaled = self.xp.empty(dim)
        self._wire = self.xp.empty(dim, dtype=HALF)

    def exchange(self, v, k, x, lr, out_mean, out_local=None):
        """out_mean = the float16 sum of fp16(v_i / n); out_local = n * fp16(v / n), this rank's share."""
        wire = self._encode(v)
        if out_local is not None:
            out_local[...] = wire
            out_local *= self.n  # exact: an 11-bit significand times a small integer
        self.comm.allreduce_float(wire)
        out_mean[...] = wire
        if not all_finite(out_mean):  # checked in float64, whose sum cannot overflow
            self.fail(k, not all_finite(self._encode(v)))
        self.bits, self.clipped = 16 * self.dim, 0

    def _encode(self, v):
        """fp16(v / n) into the wire buffer (overflow becomes inf, which the sum's check reports)."""
        self.xp.divide(v, self.n, out=self._scaled)
        with np.errstate(over="ignore", invalid="ignore"):
            self._wire[...] = self._scaled
        return self._wire
