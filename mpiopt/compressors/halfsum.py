"""16-bit floats on the wire, summed in float32 in worker order: the exchange fp16 and bf16 share.

A ring all-reduce of 16-bit values sends 2 (n - 1) / n times the buffer per rank. So does this
reduce-scatter / all-gather pair, built from two collectives on raw 16-bit words, so that it needs
no MPI float16 type and no MPI library's software half-precision sum (MPICH's MPIX_C_FLOAT16 sum
adds one element at a time, 6.5x slower than a float32 step at d = 1e7):

1. each rank encodes v into d words, padded with zeros (+0.0) to n blocks of c = ceil(d / n)
   words, and sends block r to rank r (one Alltoall);
2. rank r decodes the n blocks it received (its chunk of every worker's vector) to float32, adds
   them in worker order, and rounds the sum back to 16 bits, once;
3. one Allgather hands every rank every chunk's rounded sum, which it decodes.

Each chunk's sum is taken on one rank and then copied, so every rank gets the same bits; it is
taken in worker order, so reordering the ranks changes nothing. Bytes counted: the n - 1 blocks the
Alltoall sends away plus the block the Allgather contributes, 2 n c (2 d when n divides d), which
is what a ring all-reduce of the 2 d bytes is counted (MPICommunicator counts an all-reduce's buffer).
A non-finite v, or a value beyond the format's range, travels as inf/NaN into its chunk's sum, so
every rank sees a non-finite mean and stops, naming the ranks whose own words were not finite.

A subclass gives ``make_codec`` (an object with ``encode(v, n, words)``, ``reduce(rows, order,
words)`` and ``decode(words, out)``: see :mod:`mpiopt.kernels.half`) and ``share``, the factor from a
decoded word to this rank's C(v) (fp16 sends v / n: n; bf16 sends v: 1). The mean is the decoded
sum times ``share / n``.
"""

import numpy as np

from mpiopt.compressors.base import Compressor, all_finite, worker_order

WORD = np.dtype(np.uint16)


class HalfSumCompressor(Compressor):
    """Template: 16-bit words by Alltoall, float32 worker-order chunk sums, Allgather of the sums."""

    collective = "alltoall"
    unbiased = False
    share = 1.0

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        xp, n = self.xp, self.n
        self.chunk = -(-dim // n)
        self.send = xp.zeros((n, self.chunk), dtype=WORD)  # the padding stays +0.0
        self.rows = xp.empty((n, self.chunk), dtype=WORD)
        self.mine = xp.empty(self.chunk, dtype=WORD)
        self.gathered = xp.empty(n * self.chunk, dtype=WORD)
        self.order = worker_order(comm, self.worker)
        self.codec = self.make_codec()

    def make_codec(self):
        raise NotImplementedError

    def _sum(self, v):
        """Encode, reduce-scatter, sum this rank's chunk, all-gather: the d words of the rounded sum."""
        self.codec.encode(v, self.n, self.send.reshape(-1))
        self.comm.alltoall(self.send, self.rows)
        self.codec.reduce(self.rows, self.order, self.mine)
        self.comm.allgather(self.mine, self.gathered)
        self.bits, self.clipped = 16 * self.dim, 0
        return self.gathered[:self.dim]

    def _fail(self, k, scratch) -> None:
        """Stop every rank (``fail`` does not return), saying whether this rank's own words were finite."""
        self.codec.decode(self.send.reshape(-1)[:self.dim], scratch)
        self.fail(k, not all_finite(scratch))

    def exchange(self, v, k, x, lr, out_mean, out_local=None):
        """out_mean = (decoded chunk sums) * share / n; out_local = decoded own words * share."""
        self.codec.decode(self._sum(v), out_mean)
        scale = self.share / self.n
        if scale != 1.0:
            out_mean *= scale
        if not all_finite(out_mean):
            self._fail(k, out_mean)
        if out_local is not None:
            self.codec.decode(self.send.reshape(-1)[:self.dim], out_local)
            if self.share != 1.0:
                out_local *= self.share  # exact: a 16-bit float's significand times a small integer

    def exchange_update(self, v, k, x, lr, mean):
        """x -= lr * mean_i C(v_i): the codec's one-pass decode-and-update when it has one (the same
        bits as ``exchange`` then ``apply_step``), after a check of the words for inf/NaN."""
        if not getattr(self.codec, "takes_update", lambda x: False)(x):
            return super().exchange_update(v, k, x, lr, mean)
        words = self._sum(v)
        if not self.codec.finite(words):
            self._fail(k, mean)
        self.codec.decode_update(words, self.share / self.n, lr, x)
