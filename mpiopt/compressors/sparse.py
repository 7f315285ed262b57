"""Template of sparsifying compressors: each rank sends (int32 index, value) pairs of its choice.

Wire, per rank: a message of c pairs laid out as c values (``float_dtype``: 8 bytes, or 4 with
float32) followed by their c int32 indices -- 12 c bytes (8 c with float32). Values first keeps each
block aligned in the send buffer; the receiver copies a rank's values into an aligned buffer before
use (a float64 block may start at a 4-byte boundary in the gathered bytes).

* A **fixed count** (every rank sends the same c at step k: top-k) goes by one Allgather of the
  messages. A non-finite v is signalled in the message itself: its first index is -1.
* A **variable count** (a threshold: DGC) first Allgathers one int32 count per rank (4 bytes,
  counted; -1 signals a non-finite v), then Allgathervs the messages.

Either way every rank learns of a non-finite v from a collective it does anyway, and all stop
together. The mean over ranks is dense: each rank's pairs added in *worker* order into zeros (indices
within one message are distinct), then times 1/n -- the same bits on every rank, whatever the rank
order. ``sent_indices`` are the indices this rank sent at the last exchange (DGC's memory clears its
momentum and velocity exactly there). Sparsification is biased (omega 0).
"""

import math
from typing import ClassVar

import numpy as np

from mpiopt.compressors.base import FLOAT_DTYPE, Compressor, Option, all_finite, bad_option, fraction, worker_order

INDEX = np.dtype(np.int32)
DENSITY = Option("density", 0.01, float, "fraction of the coordinates each rank sends (k = ceil(density d))",
                 valid=fraction, rule="a number in (0, 1]")


def count_for(density: float, d: int) -> int:
    """Coordinates sent at this density: ceil(density * d), at least 1 and at most d."""
    return min(d, max(1, math.ceil(round(density * d, 9))))


def largest(xp, absv, c: int, scratch):
    """Ascending indices of the c largest entries of ``absv`` (finite), ties at the c-th largest value
    going to the lowest indices. The cut is a value, not a position in a partition, so the choice is
    the same on every CPU: numpy's argpartition leaves equal entries in an order that follows its
    SIMD target. ``scratch`` is a float array of at least absv.size entries."""
    d = absv.size
    if c >= d:
        return xp.arange(d)
    part = scratch[:d]
    part[...] = absv
    part.partition(d - c)
    cut = part[d - c]
    above = xp.flatnonzero(absv > cut)
    ties = xp.flatnonzero(absv == cut)[:c - above.size]
    return xp.sort(xp.concatenate((above, ties)))


class SparseCompressor(Compressor):
    """Subclasses set ``fixed_count`` and implement ``count(k)`` (the pairs aimed at at step k),
    ``max_count()`` (the most pairs any step sends; it sizes the buffers) and ``select(absv, k)``
    (distinct indices, an integer array of this array module, from |v|)."""

    options = (FLOAT_DTYPE,)
    unbiased = False
    collective = "allgather"
    fixed_count: ClassVar[bool] = True

    def __init__(self, comm, dim, **kw):
        super().__init__(comm, dim, **kw)
        if dim > np.iinfo(INDEX).max:
            raise bad_option(f"compressor '{self.name}' sends int32 indices; d = {dim} is too large")
        xp, n, kmax = self.xp, self.n, self.max_count()
        self.value_dtype = np.dtype(self.opts["float_dtype"])
        self.pair_bytes = INDEX.itemsize + self.value_dtype.itemsize
        self._absv = xp.empty(dim)
        self._scratch = xp.empty(dim)
        self._send = xp.zeros(kmax * self.pair_bytes, dtype=np.uint8)
        self._recv = xp.zeros(n * kmax * self.pair_bytes, dtype=np.uint8)
        self._values = xp.empty(kmax, dtype=self.value_dtype)
        self._count = np.zeros(1, dtype=INDEX)
        self._counts = np.zeros(n, dtype=INDEX)
        self._byte_counts = np.zeros(n, dtype=np.int64)
        self.order = worker_order(comm, self.worker)
        self.sent = 0
        """Pairs this rank sent at the last exchange."""

    def count(self, k: int) -> int:
        raise NotImplementedError

    def max_count(self) -> int:
        raise NotImplementedError

    def select(self, absv, k: int):
        raise NotImplementedError

    def _blocks(self, buf, c: int):
        """(values, indices) of a c-pair message at the start of ``buf`` (uint8)."""
        split = c * self.value_dtype.itemsize
        return buf[:split].view(self.value_dtype), buf[split:c * self.pair_bytes].view(INDEX)

    @property
    def sent_indices(self):
        """The indices this rank sent at the last exchange (a view, valid until the next one)."""
        return self._blocks(self._send, self.sent)[1]

    def exchange(self, v, k, x, lr, out_mean, out_local=None):
        absv = self.xp.abs(v, out=self._absv)
        finite = all_finite(absv)
        chosen = self.select(absv, k) if finite else None
        self.sent = self.count(k) if self.fixed_count or chosen is None else int(chosen.size)
        values, indices = self._blocks(self._send, self.sent)
        if finite:
            indices[...] = chosen
            values[...] = v[chosen]
        else:
            indices[...] = -1
            values[...] = 0
        counts = self._gather(finite)
        if counts is None:
            self.fail(k, not finite)
            return
        self._decode(counts, out_mean)
        if out_local is not None:
            out_local[...] = 0
            out_local[indices] = values
        header = 0 if self.fixed_count else INDEX.itemsize
        self.bits, self.clipped = 8 * (header + self.sent * self.pair_bytes), 0

    def _gather(self, finite: bool):
        """All ranks' messages into the receive buffer; their pair counts (host int32), or None when
        some rank's v was not finite."""
        comm, c, n = self.comm, self.sent, self.n
        if self.fixed_count:
            size = c * self.pair_bytes
            comm.allgather(self._send[:size], self._recv[:n * size])
            firsts = [int(self._blocks(self._recv[r * size:], c)[1][0]) for r in range(n)]
            self._counts[...] = c
            return None if min(firsts) < 0 else self._counts
        self._count[0] = c if finite else -1
        comm.allgather(self._count, self._counts)
        if (self._counts < 0).any():
            return None
        np.multiply(self._counts, self.pair_bytes, out=self._byte_counts)
        comm.allgatherv(self._send[:c * self.pair_bytes], self._recv, self._byte_counts)
        return self._counts

    def _decode(self, counts, out):
        """out = (sum over ranks in worker order of each rank's pairs, scattered densely) / n."""
        starts = (np.cumsum(counts, dtype=np.int64) - counts) * self.pair_bytes
        vsize = self.value_dtype.itemsize
        out[...] = 0
        for r in self.order:
            c, start = int(counts[r]), int(starts[r])
            self._values.view(np.uint8)[:c * vsize] = self._recv[start:start + c * vsize]
            indices = self._recv[start + c * vsize:start + c * self.pair_bytes].view(INDEX)
            out[indices] += self._values[:c]
        out *= 1.0 / self.n
