"""The recursive-doubling plan of mpiopt.torch.doubling, played out in one process for 1..33 ranks.

(The all-reduce itself runs over real gloo in tests/mpi/test_torch_comm.py.)"""

import numpy as np
import pytest

pytest.importorskip("torch")

from mpiopt.torch.doubling import DoublingAllreduce, doubling_plan  # noqa: E402


def play(size: int) -> np.ndarray:
    """Each rank's value after the plan's messages, rank r starting with 10^r mod a prime (so a
    rank counted twice or missed changes the sum)."""
    plans = [doubling_plan(r, size) for r in range(size)]
    value = np.array([pow(10, r, 1_000_003) for r in range(size)], dtype=np.int64)
    folded = [r for r, (fold, _) in enumerate(plans) if fold is not None and r % 2 == 0]
    for r in folded:
        assert plans[r][1] == [] and plans[r + 1][0] == r and plans[r][0] == r + 1
        value[r + 1] += value[r]
    active = [r for r in range(size) if r not in folded]
    rounds = {len(plans[r][1]) for r in active}
    assert len(rounds) == 1 and 2 ** rounds.pop() == len(active)
    for j in range(len(plans[active[0]][1])):
        received = {}
        for r in active:
            peer = plans[r][1][j]
            assert peer in active and plans[peer][1][j] == r, (size, r, j)
            received[r] = value[peer]
        for r in active:
            value[r] += received[r]
    for r in folded:
        value[r] = value[r + 1]
    return value


@pytest.mark.parametrize("size", range(1, 34))
def test_every_rank_ends_with_the_sum_of_all(size):
    value = play(size)
    assert (value == sum(pow(10, r, 1_000_003) for r in range(size))).all()


def test_rounds_are_log2_n_and_two_more_for_a_fold():
    assert [len(doubling_plan(0, n)[1]) for n in (2, 4, 8, 16)] == [1, 2, 3, 4]
    assert doubling_plan(0, 6) == (1, []) and doubling_plan(1, 6) == (0, [3, 4])


def test_a_rank_outside_the_group_and_a_float_sum_are_refused():
    import torch

    with pytest.raises(ValueError, match="not one of 4 ranks"):
        doubling_plan(4, 4)
    with pytest.raises(TypeError, match="maxima and integer sums only"):
        DoublingAllreduce(None, 0, 1)(torch.ones(3), torch.distributed.ReduceOp.SUM)
