"""nat: natural compression (Horvath et al., 2019). Each coordinate is rounded, without bias, to a
signed power of two: |v| in [2^a, 2^(a+1)) becomes 2^(a+1) with probability |v| / 2^a - 1, else 2^a.

Wire format per rank, by Allgather: one uint8 per coordinate (bit 7: sign; bits 0-6: offset o in
0..126 of the exponent below the rank's top exponent E, value 2^(E - o); 127: zero) and a 4-byte
header (E as int16, a non-finite flag, a pad byte). Magnitudes below s = 2^(E - 126) -- 2^-126 of
the largest -- are rounded without bias between 0 and s. 8 bits per coordinate (the paper's format
uses 9: sign + a float32 exponent). omega = 1/8.

With the numba kernel the encoding and the worker-order mean are compiled loops
(:mod:`mpiopt.kernels.nat_numba`) with the numpy code's bytes and bits.
"""

import numpy as np

from mpiopt.compressors.base import KERNEL, GatherCompressor, all_finite, register

ZERO = 127
SPAN = 126


@register
class NatCompressor(GatherCompressor):
    """Unbiased rounding to signed powers of two, one byte a coordinate."""

    name = "nat"
    options = (KERNEL,)

    @classmethod
    def omega(cls, dim, opts):
        return 1.0 / 8.0

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        self.setup_gather(np.uint8, dim + 4)
        self.quant = self.quantizer(dim)
        d, xp = dim, self.xp
        self._a = xp.empty(d)
        self._mant = xp.empty(d)
        self._exp = xp.empty(d, dtype=np.int32)
        self._p = xp.empty(d)
        self._up = xp.empty(d, dtype=bool)
        self._mask = xp.empty(d, dtype=bool)
        self._code = xp.empty(d, dtype=np.int32)
        self._rexp = xp.empty((self.n, d), dtype=np.int32)
        self._rmask = xp.empty((self.n, d), dtype=bool)
        self._codec = None
        if xp is np and self.opts["kernel"] == "numba":
            from mpiopt.kernels import nat_numba

            self._codec = nat_numba
            self._order = np.asarray(self.order, dtype=np.int64)
            self._tops = np.empty(self.n, dtype=np.int64)

    def prepare(self, x):
        super().prepare(x)
        if self._codec is not None:
            self._codec.warm_up()

    def _header(self, top: int, finite: bool) -> None:
        send, d = self.send, self.dim
        send[d:d + 2].view(np.int16)[0] = top
        send[d + 2] = 0 if finite else 1

    def encode(self, v, k):
        if self._codec is not None:
            top, finite = self._codec.encode(v, self.quant.stream_key(k), self.send)
            self._header(top, finite)
            return finite
        xp = self.xp
        a = xp.abs(v, out=self._a)
        finite = all_finite(a)
        if not finite:
            xp.nan_to_num(a, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
        mant, ex = xp.frexp(a, out=(self._mant, self._exp))
        top = int(ex.max()) if self.dim and a.max() > 0 else 0
        u = self.quant.noise(k)
        p = xp.multiply(mant, 2.0, out=self._p)
        p -= 1.0
        up = xp.less(u, p, out=self._up)
        code = xp.subtract(top + 1, ex, out=self._code)  # offset of the lower power 2^(ex-1)
        code -= up
        tiny = xp.less_equal(ex, top - SPAN, out=self._mask)
        if tiny.any():
            xp.ldexp(a, -(top - SPAN), out=p)
            xp.less(u, p, out=up)
            xp.copyto(code, SPAN, where=tiny & up)
            xp.copyto(code, ZERO, where=tiny & ~up)
        xp.copyto(code, ZERO, where=xp.equal(a, 0.0, out=self._mask))
        negative = xp.logical_and(xp.signbit(v), code != ZERO, out=self._up)  # CuPy's ufuncs take no where=
        xp.copyto(code, code + 128, where=negative)
        xp.copyto(self.send[:self.dim], code, casting="unsafe")
        self._header(top, finite)
        return finite

    def decode_mean(self, recv, out_mean, out_local):
        if self._codec is None:
            return super().decode_mean(recv, out_mean, out_local)
        d = self.dim
        if recv[:, d + 2].any():
            return False
        self._tops[:] = recv[:, d:d + 2].copy().view(np.int16)[:, 0]
        local = np.empty(0) if out_local is None else out_local
        self._codec.decode_mean(recv, self._tops, self._order, 1.0 / self.n, out_mean, self.comm.rank, local)
        return True

    def decode_rows(self, recv, vals):
        xp, d = self.xp, self.dim
        if recv[:, d + 2].any():
            return False
        tops = recv[:, d:d + 2].copy().view(np.int16).astype(np.int32)  # (n, 1), tiny
        codes = recv[:, :d]
        e = xp.bitwise_and(codes, 127, out=self._rexp, casting="unsafe")
        zero = xp.equal(e, ZERO, out=self._rmask)
        xp.subtract(tops, e, out=e)
        xp.ldexp(1.0, e, out=vals)
        vals[zero] = 0.0
        xp.copyto(vals, -vals, where=codes >= 128)  # CuPy's ufuncs take no where=
        return True

    def message_bits(self):
        return 8 * self.dim + 16
