"""fp16: v / n cast to IEEE half precision, summed in float32 by chunks, the sum sent back as fp16.

Wire: 16-bit words only, by the reduce-scatter / all-gather pair of
:class:`~mpiopt.compressors.halfsum.HalfSumCompressor` (an Alltoall of each rank's words, each chunk
summed in float32 in worker order by the rank that owns it and rounded to fp16 once, an Allgather of
the rounded chunks): 2 (n - 1) / n times 2 d bytes a rank, what a ring all-reduce of float16 sends,
under any MPI library (no MPI float16 type is needed; MPICH's float16 sum is a software loop 6.5x
slower than a float32 step). This is what PyTorch DDP users compare against (torch's
``fp16_compress_hook``): each rank divides by n *before* the cast, so the sum of n values of at
most 65504 / n each stays in range. The mean is fp16(sum_i float32(fp16(v_i / n))), the same bits on
every rank and whatever the rank order. Rounding to nearest is biased (omega 0, not usable by DIANA).
A non-finite v, or a |v / n| beyond float16's range, reaches every rank as a non-finite sum, and every
rank stops together.

The rounding runs in :mod:`mpiopt.kernels.half`'s numba codec when numba is installed (numpy rounds
to float16 one value at a time), else in numpy's casts; the vector's length and ``MPIOPT_KERNEL``
pick as for the int compressor (:func:`mpiopt.kernels.cpu_kernel`). Both give the same words.
"""

from mpiopt.compressors.base import register
from mpiopt.compressors.halfsum import HalfSumCompressor
from mpiopt.kernels import cpu_kernel
from mpiopt.kernels.half import codec


@register
class FP16Compressor(HalfSumCompressor):
    """C(v) = n * fp16(v / n): half precision, 16 bits a coordinate, summed by chunks in float32."""

    name = "fp16"

    @property
    def share(self) -> float:
        return float(self.n)

    def make_codec(self):
        return codec(self.xp, cpu_kernel(size=self.dim), self.dim, self.chunk)
