"""topk: each rank sends the k = ceil(density d) coordinates of v largest in magnitude, exactly.

Wire: k (value, int32 index) pairs per rank -- 12 k bytes with float64 values, 8 k with float32 --
by one Allgather (the count is the same on every rank, so no count is exchanged; a non-finite v is
signalled by index -1 in the message). Decoding and the worker-order mean are the
:class:`~mpiopt.compressors.sparse.SparseCompressor` template's. Biased (omega 0): use it with error
feedback (``ef-sgd``).
"""

from mpiopt.compressors.base import FLOAT_DTYPE, register
from mpiopt.compressors.sparse import DENSITY, SparseCompressor, count_for, largest


@register
class TopK(SparseCompressor):
    """Exact top-k by |v| (ties at the k-th value to the lowest indices), indices sent in ascending order."""

    name = "topk"
    options = (DENSITY, FLOAT_DTYPE)
    fixed_count = True

    def max_count(self):
        return count_for(float(self.opts["density"]), self.dim)

    def count(self, k):
        return self.max_count()

    def select(self, absv, k):
        return largest(self.xp, absv, self.max_count(), self._scratch)
