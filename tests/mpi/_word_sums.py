"""Helper of test_word_sums.py (run under mpiexec): bounded integers summed as 64-bit words.

    mpiexec -n N python _word_sums.py OUT.json

Rank 0 writes a JSON report: for int8, int16 and int32, ``sum_bounded`` of values in [-B, B]
(B = floor(M / n)), every rank at +B or -B on some coordinates, against the int64 sum of the
gathered rows, with stale out-of-bound values in the padding beforehand; and the int compressor's
exchanges at a d that sums as words (the ``auto`` header, a redo in int16 after an int8 overflow, the
fill rule's header-less sum) and the hint compressor's, each against the gathered integers.
"""

import json
import sys

import numpy as np
from mpi4py import MPI

from _gathered import gather_rows, same_everywhere
from mpiopt.comm import MPICommunicator
from mpiopt.compressors.hint import HintCompressor
from mpiopt.compressors.integer import IntCompressor
from mpiopt.compressors.lanes import LANES_FROM, padded_bytes, sum_bounded, takes_words
from mpiopt.kernels import int_bound

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
D = LANES_FROM + 5  # int8: 5 values past a whole word, so the buffer is padded


report = {"ranks": size}
rng = np.random.default_rng(rank)
for dtype in (np.int8, np.int16, np.int32):
    comm = MPICommunicator(world)
    itemsize = np.dtype(dtype).itemsize
    bound = int_bound(dtype, size)
    buf = np.empty(padded_bytes(D * itemsize) // itemsize, dtype=dtype)
    buf[:] = np.iinfo(dtype).max  # stale values past D, out of the bound: zeroed before the sum
    values = rng.integers(-bound, bound, size=D, endpoint=True)
    values[:64] = bound  # every rank at +B: each lane's largest sum, 2 B n
    values[64:128] = -bound  # every rank at -B: each lane's smallest, 0
    values[128:192] = bound if rank % 2 else -bound
    buf[:D] = values
    expected = gather_rows(values.astype(np.int64)).sum(axis=0)
    summed = sum_bounded(comm, buf, D, bound)
    report[np.dtype(dtype).name] = {
        "as_words": takes_words(comm, itemsize, D),
        "exact": bool(np.array_equal(summed.astype(np.int64), expected)),
        "padding_zero": bool((buf[D:] == 0).all()),
        "bytes": comm.bytes_sent,
        "padded_bytes": padded_bytes(D * itemsize),
    }


def exchanged(label: str, v: np.ndarray, **opts) -> None:
    """Two exchanges of ``v`` (the fill rule's first is a float step), the second one reported."""
    comm = MPICommunicator(world)
    comp = IntCompressor(comm, D, seed=3, worker=rank, fail=None, **opts)
    x, mean, local = np.zeros(D), np.empty(D), np.empty(D)
    for k in range(2):
        comp.exchange(v, k, x, 0.1, mean, local)
    level = int(comp.state["level"])
    sums = comp._buffer(level)[1].astype(np.int64)
    report[label] = {
        "sum_exact": bool(np.array_equal(sums, gather_rows(comp.quant.sent.astype(np.int64)).sum(axis=0))),
        "mean_exact": bool(np.array_equal(mean, sums / (size * comp.alpha_blocks[0]))),
        "same_everywhere": same_everywhere(mean),
        "summary": comp.summary(),
        "clipped": world.allreduce(comp.clipped),
        "bytes": comm.bytes_sent,
    }


v = rng.standard_normal(D) * 3
exchanged("auto", v, alpha="constant", alpha0=0.5)  # int8 with the header, every rank fits
big = v.copy()
if rank == 0:
    big[:100] = 200.0  # rank 0 alone overflows int8: every rank redoes the step in int16
exchanged("redo", big, alpha="constant", alpha0=1.0)
exchanged("fill", v, alpha="fill")  # the exponents decide the level (int16 under the floor): no header

comm = MPICommunicator(world)
hint = HintCompressor(comm, D, seed=3, worker=rank, fail=None, bits=8)
mean = np.empty(D)
hint.exchange(v, 0, np.zeros(D), 0.1, mean)
hint_sums = hint._ints.astype(np.int64)
report["hint"] = {
    "sum_exact": bool(np.array_equal(hint_sums, gather_rows(hint.quant.sent.astype(np.int64)).sum(axis=0))),
    "same_everywhere": same_everywhere(mean),
    "bytes": comm.bytes_sent,
}

if rank == 0:
    with open(sys.argv[1], "w") as fh:
        json.dump(report, fh, indent=1)
