"""Helper of test_torch_comm.py: every TorchCommunicator collective over real gloo, checked on each rank.

    (torchlaunch, n ranks) python _torch_comm_checks.py all|abort doubling|ring

``all`` runs every check but ``abort`` (``subgroup`` needs 3 or more ranks), each asserting on
every rank (a failed assert exits non-zero; one launch, as starting torch on n processes costs
seconds). ``abort``: rank 1 aborts
while rank 0 waits in a collective (an integer sum by recursive doubling, or a float sum by gloo's
ring), which must then fail (exit 4) instead of hanging.
"""

import os
import sys

import numpy as np

from _torch_common import finish, init_gloo
from mpiopt.comm import Communicator
from mpiopt.torch.comm import TorchCommunicator
from mpiopt.compressors import compressor_class
from mpiopt.errors import InputError


def fail(k, local_bad):
    raise AssertionError(f"unexpected non-finite values at step {k}")


def collectives(comm: TorchCommunicator) -> None:
    r, n = comm.rank, comm.size
    assert isinstance(comm, Communicator)
    assert comm.int_dtypes == tuple(np.dtype(t) for t in (np.int8, np.int32, np.int64))
    sent = 0
    for t in comm.int_dtypes:
        a = np.full(5, r + 1, dtype=t)
        assert comm.allreduce_int(a) is a and (a == n * (n + 1) // 2).all() and a.dtype == t
        sent += a.nbytes
    f = np.array([r + 0.5, -r], dtype=np.float64)
    comm.allreduce_float(f)
    assert f.tolist() == [n * n / 2, -n * (n - 1) / 2]
    m = np.array([r, -r], dtype=np.float32)
    comm.allreduce_max(m)
    assert m.tolist() == [n - 1, 0]
    sent += f.nbytes + m.nbytes
    recv = np.empty((n, 3), dtype=np.int64)
    comm.allgather(np.arange(3, dtype=np.int64) + 10 * r, recv)
    assert (recv == np.arange(3) + 10 * np.arange(n)[:, None]).all()
    sent += 3 * 8
    counts = np.arange(1, n + 1)  # rank r sends r + 1 values: padding to n must not be counted
    v = np.empty(int(counts.sum()), dtype=np.float32)
    comm.allgatherv(np.full(r + 1, r, dtype=np.float32), v, counts)
    assert v.tolist() == [float(q) for q in range(n) for _ in range(q + 1)]
    sent += (r + 1) * 4
    words = (np.arange(2 * n, dtype=np.uint16) + 100 * r).reshape(n, 2)  # block q goes to rank q
    got = np.empty((n, 2), dtype=np.uint16)
    comm.alltoall(words, got)
    assert (got == np.arange(2 * r, 2 * r + 2) + 100 * np.arange(n)[:, None]).all(), got
    sent += (n - 1) * 2 * 2  # the blocks sent away
    assert comm.bytes_sent == sent, (comm.bytes_sent, sent)
    assert comm.allgather_object({"rank": r}) == [{"rank": q} for q in range(n)]
    b = np.full(4, r, dtype=np.float64)
    comm.broadcast(b, root=n - 1)
    assert (b == n - 1).all()
    assert comm.bcast(("hello", r), root=1) == ("hello", 1)
    assert comm.bytes_sent == sent  # set-up collectives are not wire bytes
    try:
        comm.allreduce_int(np.zeros(2, dtype=np.int16))
    except TypeError as exc:
        assert "int16" in str(exc)
    else:
        raise AssertionError("an int16 Allreduce was accepted")


def int16_refused(comm: TorchCommunicator) -> None:
    try:
        compressor_class("int")(comm, 10, seed=0, worker=comm.rank, fail=fail, wire_dtype="int16")
    except InputError as exc:
        text = str(exc)
        assert "cannot sum int16" in text and "int8, int32, int64" in text and "auto" in text, text
        print("refused:", text)
    else:
        raise AssertionError("wire_dtype='int16' was accepted over gloo")


def auto_climbs(comm: TorchCommunicator) -> None:
    """int8 -> int32 on an overflow (never int16), exact: the sum equals the float mean to 1/alpha."""
    d, n = 1000, comm.size
    comp = compressor_class("int")(comm, d, seed=1, worker=comm.rank, fail=fail, wire_dtype="auto",
                                   alpha="constant", alpha0=100.0)
    rng = np.random.default_rng(comm.rank)
    mean = np.empty(d)
    for k, scale in enumerate((0.01, 0.01, 50.0, 0.01)):  # step 2: |alpha v| up to ~2e4 > int8's bound
        v = rng.standard_normal(d) * scale
        comp.exchange(v, k, None, 0.1, mean)
        exact = comm.allreduce_float(v.copy(), count=False) / n
        assert np.abs(mean - exact).max() <= 1.0 / 100.0, (k, np.abs(mean - exact).max())
        assert comp.clipped == 0
    wires = comp.summary()["steps_by_wire"]
    assert wires == {"int8": 2, "int32": 2}, wires  # it stays wide until a streak fits
    assert int(comp.state["redone_steps"]) == 1
    print("wires:", wires)


def doubling(comm: TorchCommunicator) -> None:
    """Integer sums and maxima of up to ``doubling_bytes`` go by recursive doubling (no call of the
    backend's all-reduce) with the ring's bits, int8 wrap-around included; larger buffers and float
    sums go to the backend."""
    import torch.distributed as dist

    ring = TorchCommunicator(doubling_bytes=0)
    calls = []
    backend_allreduce = dist.ProcessGroup.allreduce
    dist.ProcessGroup.allreduce = lambda group, *a, **kw: calls.append(1) or backend_allreduce(group, *a, **kw)
    try:
        rng = np.random.default_rng(comm.rank)
        for t in comm.int_dtypes:
            info = np.iinfo(t)
            a = rng.integers(info.min, info.max, size=1000, endpoint=True, dtype=t)  # int8 sums wrap
            b = a.copy()
            comm.allreduce_int(a)
            assert not calls, f"a {a.nbytes}-byte {t} sum went to the backend"
            ring.allreduce_int(b)
            assert calls and np.array_equal(a, b), t
            calls.clear()
        m = rng.standard_normal(7).astype(np.float32)
        m2 = m.copy()
        comm.allreduce_max(m)
        ring.allreduce_max(m2)
        assert len(calls) == 1 and np.array_equal(m, m2)
        calls.clear()
        big = np.ones(comm.doubling_bytes + 1, dtype=np.int8)
        comm.allreduce_int(big)
        comm.allreduce_float(np.ones(3))
        assert len(calls) == 2 and (big == comm.size).all()
    finally:
        dist.ProcessGroup.allreduce = backend_allreduce
    try:
        TorchCommunicator(doubling_bytes=-1)
    except InputError as exc:
        assert "doubling_bytes" in str(exc)
    else:
        raise AssertionError("doubling_bytes=-1 was accepted")


def measured(comm: TorchCommunicator) -> None:
    """Integer sums above ``doubling_bytes`` go by the ring and by doubling in turn, exactly, until the
    ranks agree (one more backend all-reduce: the timed maxima) and all keep the same algorithm."""
    import torch.distributed as dist

    from mpiopt.torch.ring_or_doubling import TRIALS

    chooser = TorchCommunicator(doubling_bytes=1024)
    calls = []
    backend_allreduce = dist.ProcessGroup.allreduce
    dist.ProcessGroup.allreduce = lambda group, *a, **kw: calls.append(1) or backend_allreduce(group, *a, **kw)
    try:
        turns = 2 * (TRIALS + 1)
        rng = np.random.default_rng(comm.rank)
        for k in range(turns + 4):
            a = rng.integers(-2**20, 2**20, size=1000, dtype=np.int32)  # 4000 bytes: above 1024
            exact = a.astype(np.int64)
            comm.allreduce_int(exact)
            before, sent = len(calls), chooser.bytes_sent
            chooser.allreduce_int(a)
            assert np.array_equal(a, exact), k
            by_ring = len(calls) - before
            if k < turns - 1:
                assert by_ring == (k % 2 == 0), (k, by_ring)
            elif k == turns - 1:
                assert by_ring == 1 and chooser.bytes_sent - sent == 4000 + 16  # doubling's turn, then the agreement
            else:
                assert by_ring == (not chooser._larger.kept[12]), (k, by_ring)
        kept = np.array([chooser._larger.kept[12]], dtype=np.int64)
        lowest = -kept
        comm.allreduce_max(kept)
        comm.allreduce_max(lowest)
        assert kept[0] == -lowest[0], "the ranks kept different algorithms"
        assert chooser.larger_algorithms == {"2048-4095 bytes": "doubling" if kept[0] else "ring"}
        assert comm.larger_algorithms == {}  # its sums above 64 KiB: none yet
        print("kept:", "doubling" if kept[0] else "ring")
    finally:
        dist.ProcessGroup.allreduce = backend_allreduce


def subgroup(comm: TorchCommunicator) -> None:
    """A communicator of a subgroup (ranks 1..n-1) sums over its members only, the same buffer
    again at the next call (its tensor view is kept; with 4 ranks, 3 members: recursive doubling
    with a fold); rank 0, outside it, is refused at once."""
    import torch.distributed as dist

    members = list(range(1, comm.size))
    group = dist.new_group(members)
    if comm.rank == 0:
        try:
            TorchCommunicator(group)
        except InputError as exc:
            assert "not a member" in str(exc)
        else:
            raise AssertionError("a communicator of a group without this rank was built")
        return
    sub = TorchCommunicator(group)
    assert (sub.rank, sub.size) == (comm.rank - 1, len(members))
    a = np.zeros(3, dtype=np.int32)
    for step in range(3):
        a[...] = comm.rank + step
        sub.allreduce_int(a)
        assert (a == sum(members) + step * len(members)).all(), (step, a)
    m = np.array([float(comm.rank)])
    sub.allreduce_max(m)
    assert m[0] == comm.size - 1


def abort(comm: TorchCommunicator) -> None:
    try:
        comm.barrier()  # rank 1 aborts only once rank 0 is past gloo's connection set-up (else its init fails)
        if comm.rank == 1:
            comm.abort(3)
        for _ in range(2):
            if sys.argv[2] == "doubling":
                comm.allreduce_int(np.zeros(4, dtype=np.int8))
            else:
                comm.allreduce_float(np.zeros(4))
    except Exception as exc:  # gloo reports the closed peer
        print("collective failed:", type(exc).__name__, flush=True)
        os._exit(4)  # not sys.exit: tearing down a process group whose peer is gone can abort (SIGABRT)
    raise AssertionError("a collective with an aborted rank succeeded")


if __name__ == "__main__":
    init_gloo()
    comm = TorchCommunicator()
    for check in ((collectives, int16_refused, auto_climbs, doubling, measured, subgroup) if sys.argv[1] == "all"
                  else (abort,)):
        check(comm)
    finish()
