"""mpiopt.torch.messages: which DDP buckets travel together, and how their futures settle.

The real DDP runs (bit-identical parameters for several buckets a message, a failure reaching every
rank) are tests/mpi/_ddp_hook_checks.py's ``messages``; here the grouping rule and the copies alone.
"""

import pytest

torch = pytest.importorskip("torch")

from mpiopt.torch.messages import MessageGroups  # noqa: E402


def bucket(index, n, dtype=torch.float32):
    params = [torch.zeros(n, dtype=dtype)]
    return index, params, torch.arange(n, dtype=dtype) + 10 * index


def feed(groups, buckets, last_index, exchange=None):
    """Hand the buckets over as DDP would; returns (their futures, the messages started)."""
    started = []

    def start(members):
        started.append([m[0] for m in members])
        done = torch.futures.Future()
        if exchange is None:
            done.set_result(None)
        else:
            try:
                groups.exchange(members, exchange)
            except Exception as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)
        return done

    futs = [groups.add(i, ps, buf, i == last_index, start) for i, ps, buf in buckets]
    return futs, started


def test_buckets_go_in_groups_of_k_and_the_steps_last_closes_a_short_one():
    groups = MessageGroups(3)
    buckets = [bucket(i, 4) for i in range(5)]
    futs, started = feed(groups, buckets, last_index=4)
    assert started == [[0, 1, 2], [3, 4]]
    assert all(f.done() for f in futs)
    assert all(f.value() is buf for f, (_, _, buf) in zip(futs, buckets))


def test_a_bucket_waits_for_its_message():
    groups = MessageGroups(2)
    index, params, buf = bucket(0, 3)
    fut = groups.add(index, params, buf, False, lambda members: pytest.fail("started before its message closed"))
    assert not fut.done()


def test_a_new_step_drops_the_buckets_a_failed_backward_left_waiting():
    groups = MessageGroups(3)
    groups.add(*bucket(0, 2), False, lambda members: pytest.fail("no message should close"))
    _, started = feed(groups, [bucket(i, 2) for i in range(3)], last_index=2)
    assert started == [[0, 1, 2]]


def test_a_message_of_two_dtypes_goes_as_one_exchange_per_run():
    groups = MessageGroups(4)
    buckets = [bucket(0, 2), bucket(1, 2), bucket(2, 2, torch.float16), bucket(3, 2)]
    _, started = feed(groups, buckets, last_index=3)
    assert started == [[0, 1], [2], [3]]


def test_the_fused_buffer_holds_the_buckets_in_order_and_the_mean_goes_back():
    groups = MessageGroups(3)
    buckets = [bucket(i, n) for i, n in enumerate((2, 3, 1))]
    before = [buf.clone() for _, _, buf in buckets]
    seen = []

    def exchange(key, params, fused):
        seen.append((key, len(params), fused.clone()))
        fused.mul_(-1)

    futs, _ = feed(groups, buckets, last_index=2, exchange=exchange)
    assert seen[0][0] == 0 and seen[0][1] == 3
    assert torch.equal(seen[0][2], torch.cat(before))
    for fut, b in zip(futs, before):
        assert torch.equal(fut.value(), -b)


def test_one_bucket_is_exchanged_in_place():
    groups = MessageGroups(1)
    index, params, buf = bucket(7, 3)
    got = []
    feed(groups, [(index, params, buf)], last_index=7, exchange=lambda key, ps, b: got.append((key, b)))
    assert got[0][0] == 7 and got[0][1] is buf


def test_a_failed_exchange_fails_every_bucket_of_its_message():
    groups = MessageGroups(2)

    def exchange(key, params, fused):
        raise RuntimeError("non-finite gradient at step 0")

    futs, _ = feed(groups, [bucket(0, 2), bucket(1, 2)], last_index=1, exchange=exchange)
    for fut in futs:
        with pytest.raises(RuntimeError, match="non-finite"):
            fut.value()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_count_below_one_or_not_an_integer_is_refused(bad):
    with pytest.raises(ValueError, match="buckets_per_message"):
        MessageGroups(bad)
