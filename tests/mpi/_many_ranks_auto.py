"""Helper of test_many_ranks.py (run under mpiexec with 128+ ranks): ``auto`` never speculates on int8.

    mpiexec -n 130 python _many_ranks_auto.py OUT.json

Every rank sends zeros for 40 steps (int8's bound floor(127 / n) is 0 at n >= 128, so no streak of
zero steps may shrink the wire to it), then alpha v = 10 in every coordinate for 5 steps. Exact SGD
moves x by -10 a step; rank 0 writes x, the wire summary and the clipped count.
"""

import json
import sys

import numpy as np

from mpiopt.comm import MPICommunicator
from mpiopt.compressors.integer import IntCompressor

D, ZERO_STEPS, MOVES = 8, 40, 5


def fail(k, local_bad):
    raise RuntimeError(f"non-finite at step {k}")


def main(out: str) -> None:
    comm = MPICommunicator()
    comp = IntCompressor(comm, D, seed=0, worker=comm.rank, fail=fail, wire_dtype="auto", alpha="constant",
                         alpha0=1.0, kernel="numpy")
    x, mean, clipped = np.zeros(D), np.empty(D), 0
    for k in range(ZERO_STEPS + MOVES):
        v = np.zeros(D) if k < ZERO_STEPS else np.full(D, 10.0)
        comp.exchange_update(v, k, x, 1.0, mean)
        clipped += comp.clipped
    summary = comp.summary()
    if comm.rank == 0:
        with open(out, "w") as fh:
            json.dump({"x": x.tolist(), "clipped": clipped, "n": comm.size, **summary}, fh)


if __name__ == "__main__":
    main(sys.argv[1])
