"""bf16: v rounded to bfloat16 (the top 16 bits of its float32), gathered, summed in float32.

Wire: d uint16 values per rank (2 d bytes), one Allgather. numpy has no bfloat16 type and MPI cannot
sum one, so each rank sends the raw bf16 bits and every rank decodes all n rows to float32 (a bf16 is
a float32 whose low 16 bits are zero), adds them in float32 in *worker* order -- the same bits on
every rank, whatever the rank order -- and takes the mean in float64. Rounding is to nearest even
from float32 (as torch's ``.to(torch.bfloat16)``), NaN stays NaN; it is biased (omega 0). A
non-finite v (or a value beyond bf16's range) travels as inf/NaN, so every rank sees a non-finite
sum and stops together.
"""

import numpy as np

from mpiopt.compressors.base import GatherCompressor, all_finite, register, sum_rows

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


@register
class BF16Compressor(GatherCompressor):
    """C(v) = bf16(float32(v)): 16 bits a coordinate, Allgather, float32 sum in worker order.

    The template's buffers, except that the decoded rows ``vals`` and their sum are float32 (the
    template's float64 rows would sum in float64)."""

    name = "bf16"
    unbiased = False

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        xp = self.xp
        self.setup_gather(BITS, dim, vals_dtype=np.float32)
        self._f32 = xp.empty(dim, dtype=np.float32)
        self._scratch = xp.empty(dim, dtype=WORD)
        self._total = xp.empty(dim, dtype=np.float32)

    def exchange(self, v, k, x, lr, out_mean, out_local=None):
        """Send bf16(v); out_mean = (float32 sum of the decoded rows in worker order) / n."""
        with np.errstate(over="ignore", invalid="ignore"):
            self._f32[...] = v
        bf16_bits(self._f32, self.send, self._scratch)
        self.comm.allgather(self.send, self.recv)
        bf16_to_float32(self.recv, self.vals)
        own = self.vals[self.comm.rank]
        total = sum_rows(self.vals, self.order, self._total)
        if not all_finite(total):  # inf/NaN travel as such, so every rank sees it
            self.fail(k, not all_finite(own))
        out_mean[...] = total
        out_mean *= 1.0 / self.n
        if out_local is not None:
            out_local[...] = own
        self.bits, self.clipped = 16 * self.dim, 0
