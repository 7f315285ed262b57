"""The timed choice between the ring and recursive doubling (mpiopt.torch.ring_or_doubling), in one
process: two real callables of different speeds (sleeps), and an agreement that is the identity (the
maximum over one rank). Over real gloo ranks it runs in tests/mpi/test_torch_comm.py."""

import time

import numpy as np
import pytest

from mpiopt.torch.ring_or_doubling import TRIALS, RingOrDoubling


def chooser(ring_seconds: float, doubling_seconds: float):
    log, agreed = [], []

    def ring():
        log.append("ring")
        time.sleep(ring_seconds)

    def doubling():
        log.append("doubling")
        time.sleep(doubling_seconds)

    choice = RingOrDoubling(lambda seconds: agreed.append(seconds.copy()), lambda: log.append("align"))
    return choice, ring, doubling, log, agreed


@pytest.mark.parametrize("faster", ["ring", "doubling"])
def test_the_faster_algorithm_is_kept_after_a_warm_up_and_the_timed_turns(faster):
    slow, fast = 0.02, 0.0
    choice, ring, doubling, log, agreed = chooser(fast if faster == "ring" else slow,
                                                  fast if faster == "doubling" else slow)
    turns = 2 * (TRIALS + 1)
    for _ in range(turns + 3):
        choice.run(100_000, ring, doubling)
    calibration = ["ring", "doubling"] + ["align", "ring", "align", "doubling"] * TRIALS  # the timed calls aligned
    assert log[:len(calibration)] == calibration
    assert log[len(calibration):] == [faster] * 3
    assert len(agreed) == 1 and agreed[0].shape == (2,)
    ring_s, doubling_s = agreed[0]
    assert (ring_s < doubling_s) == (faster == "ring")
    assert min(ring_s, doubling_s) < slow
    assert TRIALS * slow <= max(ring_s, doubling_s) < (TRIALS + 1) * slow  # the warm-up pair is not counted
    assert choice.kept == {(100_000).bit_length(): faster == "doubling"}


def test_size_classes_are_timed_and_kept_apart():
    choice, ring, doubling, log, agreed = chooser(0.0, 0.002)
    for _ in range(2 * (TRIALS + 1)):
        choice.run(100_000, ring, doubling)
    assert choice.kept == {17: False}
    log.clear()
    choice.run(300_000, ring, doubling)  # another bit length: timed from its own warm-up
    choice.run(300_000, ring, doubling)
    choice.run(100_000, ring, doubling)
    assert log == ["ring", "doubling", "ring"] and len(agreed) == 1


def test_the_agreed_maxima_decide_not_this_ranks_times():
    """Another rank found doubling slow: the maximum over the ranks says so, and every rank keeps the ring."""
    def slowest(seconds: np.ndarray) -> None:
        seconds[1] = max(seconds[1], 10.0)

    choice = RingOrDoubling(slowest, lambda: None)
    for _ in range(2 * (TRIALS + 1)):
        choice.run(5000, lambda: time.sleep(0.002), lambda: None)
    assert choice.kept == {(5000).bit_length(): False}
