"""hint: HintSGD's compressor, the SwitchML heuristic. A 1-element MAX Allreduce of max_i ||v_i||_inf,
e = ceil(log2 of it), alpha = floor((2^(b-1) - 1) / n) / 2^e, then b-bit Int(alpha v_i) summed.

We floor (2^(b-1) - 1) / n before dividing by 2^e (SwitchML does not), so |alpha v_i| <= floor(M / n)
exactly and even randomized rounding can never wrap the sum; ``rounding='random'`` keeps it
unbiased (with an additive rounding variance, omega 0), which DIANA needs.
"""

import math

import numpy as np

from mpiopt.compressors.base import KERNEL, Compressor, Option, bad_option, info_bits_int, register
from mpiopt.compressors.integer import ROUNDING
from mpiopt.compressors.lanes import sum_bounded, wire_items
from mpiopt.kernels import int_bound
from mpiopt.kernels.numpy import float_below


@register
class HintCompressor(Compressor):
    """b-bit integers scaled by the largest |v| over the ranks (one MAX Allreduce first)."""

    name = "hint"
    collective = "allreduce_int"
    options = (Option("bits", 32, int, "integer bits b on the wire", choices=(8, 16, 32, 64)), ROUNDING, KERNEL)

    @classmethod
    def check(cls, opts, comm):
        dtype = np.dtype(f"int{opts['bits']}")
        if dtype not in comm.int_dtypes:
            raise bad_option(f"--bits {opts['bits']}: this communicator cannot sum {dtype}; use other bits")
        if int_bound(dtype, comm.size) < 1:
            raise bad_option(f"--bits {opts['bits']} cannot carry a sum over {comm.size} ranks; use more bits")

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        self.dtype = np.dtype(f"int{self.opts['bits']}")
        self.bound = int_bound(self.dtype, self.n)
        self.quant = self.quantizer(dim, self.opts["rounding"])
        self._buf = self.xp.empty(wire_items(comm, self.dtype.itemsize, dim), dtype=self.dtype)
        self._ints = self._buf[:dim]
        self._abs = self.xp.empty(dim)
        self._max = np.empty(1)
        self.state = {"max_abs_q": np.zeros(())}

    def _alpha(self, v, k: int) -> float:
        """(2^(b-1) - 1) // n / 2^e for e = ceil(log2 max_i ||v_i||_inf); every rank stops on a non-finite v."""
        local = float(self.xp.abs(v, out=self._abs).max()) if self.dim else 0.0
        local_bad = not math.isfinite(local)
        self._max[0] = math.inf if local_bad else local
        big = float(self.comm.allreduce_max(self._max)[0])
        if not math.isfinite(big):
            self.fail(k, local_bad)
        if big <= 0:
            return 1.0
        mant, e = math.frexp(big)
        e = e - 1 if mant == 0.5 else e
        alpha = math.ldexp(float_below(self.bound), -e)
        return alpha if math.isfinite(alpha) else 1.0

    def exchange(self, v, k, x, lr, out_mean, out_local=None):
        alpha = self._alpha(v, k)
        q = self.quant
        q.round(v, alpha, k)
        self.clipped = q.pack(self._ints, self.bound)
        sum_bounded(self.comm, self._buf, self.dim, self.bound)
        q.decode(self._ints, alpha, self.n, out_mean)
        if out_local is not None:
            q.decode_local(alpha, out_local)
        sent = min(q.max_abs, self.bound)
        self.bits = info_bits_int(self.dim, sent) + 64
        if sent > self.state["max_abs_q"]:
            self.state["max_abs_q"][...] = sent

    def summary(self):
        buf = np.array([float(self.state["max_abs_q"])])
        self.comm.allreduce_max(buf, count=False)
        return {"wire_dtype": str(self.dtype), "max_abs_q": float(buf[0]), "kernel": self.opts["kernel"]}
