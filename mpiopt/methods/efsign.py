"""EF-signSGD (Karimireddy et al., 2019): scaled signs with error feedback, exchanged by Allgather.

Each rank forms p = eta g + e, compresses it to delta = (||p||_1 / d) sign(p) and keeps the residual
e = p - delta for the next step. On the wire: one float64 scale and d sign bits (``np.packbits``,
most significant bit first, 1 = non-negative), in one uint8 buffer per rank; every rank unpacks all n
messages in rank order and applies x -= mean_i delta_i, so the iterates are identical on every rank.
sign(0) is taken as +1 so that a sign fits one bit.
"""

import numpy as np

from mpiopt.methods.base import Method

SCALE_BYTES = 8
"""The float64 scale ||p||_1 / d that leads each rank's message."""

SIGN_TABLE = (2.0 * np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1) - 1.0).astype(np.float64)
"""Row b: the 8 signs (+1/-1, most significant bit first) that the packed byte b stands for."""


def message_bytes(d: int) -> int:
    """Bytes one rank sends per step: the scale and ceil(d / 8) bytes of packed signs."""
    return SCALE_BYTES + (d + 7) // 8


def compress(p: np.ndarray, message: np.ndarray, bits: np.ndarray, delta: np.ndarray) -> float:
    """Write p's message (scale, packed signs) into ``message`` and the delta it stands for into ``delta``.

    ``bits`` is a bool scratch array of p's size. Returns the scale ||p||_1 / d.
    """
    d = p.size
    np.abs(p, out=delta)
    scale = float(delta.sum()) / d
    message[:SCALE_BYTES].view(np.float64)[0] = scale
    np.greater_equal(p, 0.0, out=bits)
    message[SCALE_BYTES:] = np.packbits(bits)
    np.multiply(bits, 2.0 * scale, out=delta)
    delta -= scale
    return scale


def unpack_signs(packed: np.ndarray, out: np.ndarray) -> np.ndarray:
    """+1/-1 floats of packed sign bytes: ``packed`` of shape (..., nb) into ``out`` of shape (..., nb, 8)."""
    return np.take(SIGN_TABLE, packed, axis=0, out=out)


class EFSignSGD(Method):
    """EF-signSGD: x -= mean_i delta_i with delta_i = (||p_i||_1 / d) sign(p_i), p_i = eta g_i + e_i.

    State: ``e`` (this rank's error memory). Wire: ``8 + ceil(d / 8)`` bytes per rank per step.
    """

    name = "ef-signsgd"
    OPTIONS = {}
    identical_iterates = True

    def default_lr(self) -> float:
        return 1.0 / (2.0 * self.ctx.L_max)

    def start(self, x: np.ndarray) -> None:
        d, n = x.size, self.ctx.comm.size
        nb = (d + 7) // 8
        self.state = {"e": np.zeros(d)}
        self._g = np.empty(d)
        self._p = np.empty(d)
        self._delta = np.empty(d)
        self._bits = np.empty(d, dtype=bool)
        self._send = np.zeros(message_bytes(d), dtype=np.uint8)
        self._recv = np.zeros((n, message_bytes(d)), dtype=np.uint8)
        self._scales = np.empty(n)
        self._signs = np.empty((n, nb, 8))
        self._mean = np.empty(8 * nb)
        self._bits_per_step = d + 8 * SCALE_BYTES

    def step(self, x: np.ndarray, k: int) -> None:
        comm = self.ctx.comm
        e, p = self.state["e"], self._p
        g = self.ctx.problem.stochastic_grad(x, self.sample(), out=self._g)
        np.multiply(g, self.lr, out=p)
        p += e
        scale = compress(p, self._send, self._bits, self._delta)
        np.subtract(p, self._delta, out=e)

        comm.allgather(self._send, self._recv)
        self._scales.view(np.uint8).reshape(comm.size, SCALE_BYTES)[...] = self._recv[:, :SCALE_BYTES]
        if not np.isfinite(self._scales).all():
            self.raise_non_finite(k, not np.isfinite(scale))
        self.info_bits += self._bits_per_step

        signs = unpack_signs(self._recv[:, SCALE_BYTES:], self._signs).reshape(comm.size, -1)
        np.dot(self._scales, signs, out=self._mean)
        self._mean *= 1.0 / comm.size
        x -= self._mean[: x.size]
