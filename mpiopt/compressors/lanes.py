"""Exact sums of bounded integers as 64-bit words: several integers per element of the collective.

An MPI library sums integer arrays one element at a time (MPICH: an int8 Allreduce of 1e5 values at
2 ranks took 47 us, one of the same bytes as 1.25e4 uint64 words 24 us; at 4 ranks, 1e6 values: 1276
against 742 us), so the int compressor's narrow integers pay per value what float64 pays per 8 bytes.

Every value the int compressor sends lies in [-B, B] with B = floor(M / n), so that n of them cannot
wrap (its header slots, 0 or 1, too). Offset by B they lie in [0, 2B], and the sum of n of them is at
most 2 B n <= 2^bits - 2: summed as unsigned 64-bit words, 64 / bits values to a word, no lane ever
carries into the next (every partial sum of a lane is below its final sum), whatever order or
algorithm the library reduces in. Subtracting n B from every lane leaves the exact signed sums: the
same integers, the same bytes (the buffer padded to whole words), an eighth (int8) of the elements.
"""

import numpy as np

WORD = np.dtype(np.uint64)
LANES_FROM = 1 << 17
"""Integers from which a sum goes as words. Below, the offset passes cost more than they save (MPICH,
int8, median of 300, the passes included, as words / as int8: 2 ranks 21.3 / 16.7 us at 16384 values,
35.6 / 34.4 at 65536, 50.6 / 56.8 at 131072, 333 / 390 at 1e6; 4 ranks 102.9 / 76.5, 136.5 / 134.5,
182.2 / 201.7, 940 / 1245)."""
_UNSIGNED = {1: np.dtype(np.uint8), 2: np.dtype(np.uint16), 4: np.dtype(np.uint32)}


def takes_words(comm, itemsize: int, count: int) -> bool:
    """Whether ``count`` integers of ``itemsize`` bytes go as words on ``comm`` (one that says it sums
    uint64 words exactly: ``sums_words``)."""
    return count >= LANES_FROM and itemsize in _UNSIGNED and bool(getattr(comm, "sums_words", False))


def padded_bytes(nbytes: int) -> int:
    """``nbytes`` rounded up to whole words."""
    return -(-nbytes // WORD.itemsize) * WORD.itemsize


def wire_items(comm, itemsize: int, count: int) -> int:
    """The items a buffer for ``count`` integers of ``itemsize`` bytes needs on ``comm``: whole words
    where they go as words (:func:`takes_words`), else ``count``."""
    if takes_words(comm, itemsize, count):
        return padded_bytes(count * itemsize) // itemsize
    return count


def sum_bounded(comm, buf: np.ndarray, count: int, bound: int) -> np.ndarray:
    """The exact Allreduce(SUM) of ``buf[:count]`` in place, for values in [-bound, bound] on every rank
    with 2 bound n below 2^bits: as words (see the module docstring) where :func:`takes_words` and
    ``buf`` fills whole words (the items from ``count`` on, padding, are zeroed first so that no lane
    leaves the bound), else as ``comm.allreduce_int`` of ``buf[:count]``. Returns ``buf[:count]``."""
    if count < LANES_FROM or not (takes_words(comm, buf.itemsize, count) and buf.nbytes % WORD.itemsize == 0):
        return comm.allreduce_int(buf if buf.size == count else buf[:count])
    buf[count:] = 0
    lanes = buf.view(_UNSIGNED[buf.itemsize])
    np.add(lanes, bound, out=lanes)
    comm.allreduce_int(lanes.view(WORD))
    np.subtract(lanes, comm.size * bound, out=lanes)
    return buf[:count]
