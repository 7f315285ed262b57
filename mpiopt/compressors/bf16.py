"""bf16: v rounded to bfloat16 (the top 16 bits of its float32), summed in float32 by chunks.

Wire: 16-bit words only (numpy has no bfloat16 type and MPI cannot sum one), by the reduce-scatter /
all-gather pair of :class:`~mpiopt.compressors.halfsum.HalfSumCompressor`: an Alltoall of each
rank's raw bf16 bits, each chunk decoded to float32 (a bf16 is a float32 whose low 16 bits are zero)
and added in float32 in *worker* order by the rank that owns it, the sum rounded to bf16 once, an
Allgather of the rounded chunks; the mean is that sum / n in float64. The same bits on every rank,
whatever the rank order, and 2 (n - 1) / n times 2 d bytes a rank, as a ring all-reduce of bf16
(torch's ``bf16_compress_hook``). Rounding is to nearest even from float32 (as torch's
``.to(torch.bfloat16)``), NaN stays NaN; it is biased (omega 0). A non-finite v (or a value beyond
bf16's range) travels as inf/NaN, so every rank sees a non-finite sum and stops together.

The codec is :mod:`mpiopt.kernels.half_numba`'s when numba is installed (the vector's length and
``MPIOPT_KERNEL`` pick as for the int compressor), else :class:`BF16Codec` (numpy's integer operations): the same words.
"""

import numpy as np

from mpiopt.compressors.base import all_finite, register, sum_rows
from mpiopt.compressors.halfsum import HalfSumCompressor
from mpiopt.kernels import cpu_kernel
from mpiopt.kernels.half import compiled

BITS = np.dtype(np.uint16)
WORD = np.dtype(np.uint32)
HALF_SHIFT = WORD.type(16)
ROUND_BIAS = WORD.type(0x7FFF)
QUIET_NAN = 0x7FC0


def bf16_bits(f32, out, scratch):
    """The bf16 bit patterns of a float32 array (round to nearest even; NaN -> 0x7FC0) into ``out``
    (uint16), with a uint32 ``scratch`` of the same shape: (bits + 0x7FFF + bit 16) >> 16."""
    word = f32.view(WORD)
    scratch[...] = word
    scratch >>= HALF_SHIFT
    scratch &= WORD.type(1)
    scratch += ROUND_BIAS
    scratch += word
    scratch >>= HALF_SHIFT
    out[...] = scratch
    if not all_finite(f32):  # the addition can turn a NaN into inf; only then look for NaNs
        out[f32 != f32] = QUIET_NAN
    return out


def bf16_to_float32(bits, out):
    """bf16 bit patterns (uint16, any shape) as float32 values into ``out`` (exact)."""
    word = out.view(WORD)
    word[...] = bits
    word <<= HALF_SHIFT
    return out


class BF16Codec:
    """bf16 words <-> float32 with numpy's integer operations (a shift each way), float32 chunk sums."""

    def __init__(self, xp, dim: int, n: int, chunk: int):
        self.f32 = xp.empty(dim, dtype=np.float32)
        self.scratch = xp.empty(dim, dtype=WORD)
        self.vals = xp.empty((n, chunk), dtype=np.float32)
        self.acc = xp.empty(chunk, dtype=np.float32)
        self.acc_scratch = xp.empty(chunk, dtype=WORD)

    def encode(self, v, n: int, words) -> None:
        """bf16(float32(v)) into words[:d] (``n`` unused: bf16 sends v itself)."""
        with np.errstate(over="ignore", invalid="ignore"):
            self.f32[...] = v
        bf16_bits(self.f32, words[:self.f32.size], self.scratch)

    def reduce(self, rows, order, words) -> None:
        bf16_to_float32(rows, self.vals)
        with np.errstate(over="ignore", invalid="ignore"):
            sum_rows(self.vals, order, self.acc)
        bf16_bits(self.acc, words, self.acc_scratch)

    def decode(self, words, out) -> None:
        f32 = self.f32[:words.size]
        bf16_to_float32(words, f32)
        with np.errstate(invalid="ignore"):  # a signalling NaN comes out quiet
            out[...] = f32


@register
class BF16Compressor(HalfSumCompressor):
    """C(v) = bf16(float32(v)): 16 bits a coordinate, summed by chunks in float32, worker order."""

    name = "bf16"

    def make_codec(self):
        if compiled(self.xp, cpu_kernel(size=self.dim)):
            from mpiopt.kernels.half_numba import NumbaCodec

            return NumbaCodec(self.dim, self.chunk, "bf16")
        return BF16Codec(self.xp, self.dim, self.n, self.chunk)
