"""sign: EF-signSGD's scaled sign (Karimireddy et al., 2019), C(p) = (||p||_1 / d) sign(p).

On the wire, by Allgather: one float64 scale and d sign bits (``packbits``, most significant bit
first, 1 = non-negative) in one uint8 message per rank. sign(0) is taken as +1 so that a sign fits
one bit. Biased: use it with error feedback (``ef-sgd``, whose alias ``ef-signsgd`` this is).
"""

import math

import numpy as np

from mpiopt.compressors.base import GatherCompressor, register

SCALE_BYTES = 8
"""The float64 scale ||p||_1 / d that leads each rank's message."""
SIGN_TABLE = (2.0 * np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1) - 1.0).astype(np.float64)
"""Row b: the 8 signs (+1/-1, most significant bit first) that the packed byte b stands for."""


def message_bytes(d: int) -> int:
    """Bytes one rank sends per step: the scale and ceil(d / 8) bytes of packed signs."""
    return SCALE_BYTES + (d + 7) // 8


@register
class SignCompressor(GatherCompressor):
    """One scale and one bit per coordinate."""

    name = "sign"
    unbiased = False

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        xp, n, nb = self.xp, self.n, (dim + 7) // 8
        self.setup_gather(np.uint8, message_bytes(dim))
        self._abs = xp.empty(dim)
        self._bits = xp.empty(dim, dtype=bool)
        self._scales = xp.empty(n)
        self._signs = xp.empty((n, nb, 8))
        self._table = xp.asarray(SIGN_TABLE)

    def encode(self, v, k):
        xp = self.xp
        scale = float(xp.abs(v, out=self._abs).sum()) / self.dim if self.dim else 0.0
        self.send[:SCALE_BYTES].view(np.float64)[0] = scale
        xp.greater_equal(v, 0.0, out=self._bits)
        self.send[SCALE_BYTES:] = xp.packbits(self._bits)
        return math.isfinite(scale)

    def decode_rows(self, recv, vals):
        xp = self.xp
        self._scales.view(np.uint8).reshape(self.n, SCALE_BYTES)[...] = recv[:, :SCALE_BYTES]
        if not xp.isfinite(self._scales).all():
            return False
        signs = xp.take(self._table, recv[:, SCALE_BYTES:], axis=0, out=self._signs).reshape(self.n, -1)
        xp.multiply(signs[:, :self.dim], self._scales[:, None], out=vals)
        return True

    def message_bits(self):
        return self.dim + 8 * SCALE_BYTES
