"""16-bit floats on uint16 words, fast on the CPU: the fp16 and bf16 compressors' rounding and decoding.

numpy rounds float64 and float32 to float16 one value at a time (about 7 to 10 ns a value on the
x86 machines measured, more than a float32 SGD step spends per coordinate), and numba has no float16
type on the CPU. The fp16 compressor therefore works on the raw 16-bit words (what travels on the
wire) through a codec with three operations, each one pass:

* ``encode(v, n, words)``: words[:d] = the bits of fp16(v / n), the quotient taken in float64 and
  rounded once to nearest even (overflow to inf, NaN stays NaN);
* ``reduce(rows, order, words)``: words = fp16(the float32 sum of the decoded ``rows[r]``, r in
  ``order``, left to right), rows being (n, c) words;
* ``decode(words, out)``: out = the values of the words (exact in float32 or float64).

:class:`CastCodec` does them with the array module's own float16 casts (numpy or CuPy: the
reference). :class:`~mpiopt.kernels.half_numba.NumbaCodec` (its own module, so that numba is imported
only by a run that uses it) does them in compiled, vectorized loops on the bits, without
branches: the rounding is numpy's (``npy_doublebits_to_halfbits``: the same bits, NaN payloads
included), the decoding numpy's ``npy_halfbits_to_floatbits``. Both give the same words, bit for bit. The numba
codec also serves bfloat16 (``fmt='bf16'``: the words of :func:`mpiopt.compressors.bf16.bf16_bits`,
v rounded to float32 then to bf16, ``n`` unused), checks words for inf/NaN by their exponent field
(``finite``), and fuses the SGD step's decoding with its update (``decode_update``: the bits of
decoding into a mean, scaling it, and :func:`mpiopt.kernels.numpy.apply_step`).
"""

from importlib.util import find_spec
from typing import Any, List

import numpy as np

HALF = np.dtype(np.float16)
WORD = np.dtype(np.uint16)


class CastCodec:
    """The reference codec: the array module's float16 casts (numpy on the CPU, CuPy on a GPU).

    ``scratch`` (float64, d) holds v / n; ``acc`` (float32, c) holds a chunk's sum."""

    def __init__(self, xp: Any, dim: int, chunk: int):
        self.xp = xp
        self.scratch = xp.empty(dim)
        self.acc = xp.empty(chunk, dtype=np.float32)

    def encode(self, v, n: int, words) -> None:
        self.xp.divide(v, n, out=self.scratch)
        with np.errstate(over="ignore", invalid="ignore"):
            words[:self.scratch.size].view(HALF)[...] = self.scratch

    def reduce(self, rows, order: List[int], words) -> None:
        acc = self.acc
        acc[...] = rows[order[0]].view(HALF)
        for r in order[1:]:
            acc += rows[r].view(HALF)
        with np.errstate(over="ignore", invalid="ignore"):
            words.view(HALF)[...] = acc

    def decode(self, words, out) -> None:
        out[...] = words.view(HALF)


FORMATS = {"fp16": np.uint16(0x7C00), "bf16": np.uint16(0x7F80)}
"""format -> its exponent mask (all ones: inf or NaN)."""
FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def codec(xp: Any, kernel: str, dim: int, chunk: int):
    """The fp16 codec for arrays of module ``xp``: numba's when ``kernel`` is 'numba' and ``xp`` is
    numpy, else the array module's casts."""
    if compiled(xp, kernel):
        from mpiopt.kernels.half_numba import NumbaCodec

        return NumbaCodec(dim, chunk)
    return CastCodec(xp, dim, chunk)


def compiled(xp: Any, kernel: str) -> bool:
    """Whether the numba codec serves arrays of module ``xp`` under CPU kernel ``kernel``."""
    return kernel == "numba" and getattr(xp, "__name__", "numpy") == "numpy"


def warm_up() -> None:
    """Compile (or load from numba's cache) the numba codec's kernels, where numba is installed."""
    if find_spec("numba") is not None:
        from mpiopt.kernels.half_numba import warm_up as numba_warm_up

        numba_warm_up()
