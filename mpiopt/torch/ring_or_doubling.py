"""Which algorithm an exact all-reduce larger than ``doubling_bytes`` takes: timed, not guessed.

Up to ``doubling_bytes`` recursive doubling wins wherever a round costs a wake-up of oversubscribed
ranks (:mod:`mpiopt.torch.doubling`). Above it the answer depends on the link, which the library cannot
see: in the language model's DDP training (``benchmarks/lm.py``, 4 ranks on 2 cores, its 0.5 MB int8
bucket sums) doubling took the step's idle time from about 105 to 12 ms at 10 Gbit/s and gloo's ring
was the faster at 1 Gbit/s (26 against 75 ms), where doubling's log2 n times the buffer costs more than
the ring's rounds. So each size class (byte counts of the same bit length) times its first calls by
each algorithm in turn -- ring, doubling, ring, ... -- the first pair a warm-up, the next ``TRIALS``
pairs summed per algorithm, each timed call after an alignment of the ranks (a small all-reduce), so
that a rank's wait for late peers, which is no algorithm's cost, stays out of the sums; then the ranks
agree on the slowest rank's sums (one MAX all-reduce of two values, made at the same call on every
rank, since every rank makes the same sequence of reductions) and the class keeps the faster for the
rest of the run. Both give the same bits (the reductions taken are order-independent), so the choice
moves only time.
"""

import time
from typing import Callable, Dict, List

import numpy as np

TRIALS = 3
"""Timed calls of each algorithm per size class, after one warm-up call of each."""


class RingOrDoubling:
    """Per size class, the algorithm to use next and, once decided, the one kept.

    ``agree``: reduces a float64 array of two values (the ring's and doubling's summed seconds) to its
    maximum over the ranks, in place, through the backend's all-reduce. ``align``: a small collective
    that returns on a rank once every rank has entered it."""

    def __init__(self, agree: Callable[[np.ndarray], None], align: Callable[[], None], trials: int = TRIALS):
        self._agree, self._align = agree, align
        self.trials = trials
        self._calls: Dict[int, int] = {}
        self._seconds: Dict[int, List[float]] = {}
        self.kept: Dict[int, bool] = {}
        """Size class (bit length of the byte count) -> True (doubling) or False (the ring), once decided."""

    def run(self, nbytes: int, ring: Callable[[], None], doubling: Callable[[], None]) -> None:
        """Reduce by the algorithm this call of ``nbytes``'s class takes (timing it while undecided)."""
        size_class = int(nbytes).bit_length()
        kept = self.kept.get(size_class)
        if kept is not None:
            (doubling if kept else ring)()
            return
        call = self._calls.get(size_class, 0)
        self._calls[size_class] = call + 1
        by_doubling = call % 2 == 1
        if call < 2:
            (doubling if by_doubling else ring)()
            return
        self._align()
        start = time.perf_counter()
        (doubling if by_doubling else ring)()
        seconds = self._seconds.setdefault(size_class, [0.0, 0.0])
        seconds[by_doubling] += time.perf_counter() - start
        if call == 2 * self.trials + 1:
            slowest = np.array(seconds)
            self._agree(slowest)
            self.kept[size_class] = bool(slowest[1] < slowest[0])
