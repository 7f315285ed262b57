"""``mpiexec -n N python _half_sum.py OUT.json``: the fp16 and bf16 exchanges (reduce-scatter by
Alltoall, float32 worker-order chunk sums, Allgather) on real ranks, for d below, equal to and not a
multiple of N, float32 and float64 vectors, both codecs (numba, numpy), against references computed
here from every worker's vector. Rank 0 writes ``{fact: true or what went wrong}``.

The references: fp16's mean is fp16(sum_w float32(fp16(v_w / n))), bf16's bf16(sum_w float32(bf16(v_w))) / n,
the float32 sums in worker order; both lie within the formats' rounding of the float64 mean.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from mpiopt.comm import MPICommunicator
from mpiopt.compressors import REGISTRY
from mpiopt.compressors.bf16 import bf16_bits, bf16_to_float32
from mpiopt.kernels.numba import AVAILABLE as NUMBA
from mpiopt.kernels.numpy import apply_step

WORLD = MPI.COMM_WORLD
N, WORKER = WORLD.Get_size(), WORLD.Get_rank()
DIMS = (1, N + 1, 2 * N, 1001)
KERNELS = ("numba", "numpy") if NUMBA else ("numpy",)
UNIT = {"fp16": 2.0 ** -11, "bf16": 2.0 ** -8}
"""Unit roundoff of each format (half its significand's last place)."""


class Stopped(Exception):
    """What the test's fail function raises (production's raises a collective RunError)."""


def fail(k: int, local_bad: bool) -> None:
    raise Stopped((k, local_bad))


def where_ranks_stopped(call) -> list:
    """Runs ``call()`` on every rank; every rank's [step, whether its own values were bad] where it
    stopped (``fail``), or 'no fail', gathered in rank order."""
    try:
        call()
        got = "no fail"
    except Stopped as exc:
        got = list(exc.args[0])
    return WORLD.allgather(got)


def vector(worker: int, d: int, step: int, dtype) -> np.ndarray:
    return (3.0 * np.random.default_rng([worker, step, d]).standard_normal(d)).astype(dtype)


def bf16(x: np.ndarray) -> np.ndarray:
    f32 = x.astype(np.float32)
    return bf16_to_float32(bf16_bits(f32, np.empty(x.size, np.uint16), np.empty(x.size, np.uint32)),
                           np.empty(x.size, np.float32))


def fp16_mean(rows, dtype) -> np.ndarray:
    """fp16(float32 sum, in the given (worker) order, of fp16(v_w / n)), as ``dtype``."""
    total = (rows[0] / len(rows)).astype(np.float16).astype(np.float32)
    for v in rows[1:]:
        total += (v / len(rows)).astype(np.float16).astype(np.float32)
    return total.astype(np.float16).astype(dtype)


def bf16_mean(rows, dtype) -> np.ndarray:
    """bf16(float32 sum, in the given (worker) order, of bf16(v_w)) as ``dtype``, times 1 / n in ``dtype``."""
    total = bf16(rows[0])
    for v in rows[1:]:
        total += bf16(v)
    mean = bf16(total).astype(dtype)
    mean *= 1.0 / len(rows)
    return mean


REFERENCE = {"fp16": fp16_mean, "bf16": bf16_mean}


def digest(*arrays) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def communicators():
    return [("world", MPICommunicator(WORLD)), ("reversed", MPICommunicator(WORLD.Split(0, key=N - 1 - WORKER)))]


def exchanges(comm, name, d, dtype, vectors=vector):
    """Three steps: (mean, local, bytes counted, bits, x after exchange_update, x by exchange + apply_step)."""
    comp = REGISTRY[name](comm, d, seed=1, worker=WORKER, fail=fail)
    out = []
    for k in range(3):
        v = vectors(WORKER, d, k, dtype)
        mean, local = np.empty(d, dtype), np.empty(d, dtype)
        before = comm.bytes_sent
        comp.exchange(v, k, None, 0.1, mean, local)
        nbytes = comm.bytes_sent - before
        fused, plain = np.linspace(-1, 1, d).astype(dtype), np.linspace(-1, 1, d).astype(dtype)
        comp.exchange_update(v, k, fused, 0.1, np.empty(d, dtype))
        apply_step(plain, 0.1, mean.copy())
        out.append((mean, local, nbytes, comp.bits, fused, plain))
    return out


def check(facts, name, kernel, d, dtype, results) -> None:
    tag = f"{name}/{kernel}/d={d}/{np.dtype(dtype).name}"
    chunk = -(-d // N)
    ok = {"mean = reference, bit for bit": True, "within the format's rounding of the float64 mean": True,
          "local = own decoded words": True, "bytes = 2 n ceil(d / n), bits = 16 d": True,
          "exchange_update = exchange + apply_step, bit for bit": True}
    for label, res in results.items():
        for k, (mean, local, nbytes, bits, fused, plain) in enumerate(res):
            rows = [vector(w, d, k, dtype) for w in range(N)]
            exact = sum(r.astype(np.float64) for r in rows) / N
            scale = sum(np.abs(r.astype(np.float64)) for r in rows) / N
            ok["mean = reference, bit for bit"] &= np.array_equal(mean, REFERENCE[name](rows, dtype))
            ok["within the format's rounding of the float64 mean"] &= bool(
                (np.abs(mean - exact) <= 2.1 * UNIT[name] * scale + (N + 1) * 2.0 ** -24).all())
            own = rows[WORKER]
            want_local = (N * (own / N).astype(np.float16).astype(np.float64) if name == "fp16"
                          else bf16(own).astype(np.float64))
            ok["local = own decoded words"] &= np.array_equal(local, want_local.astype(dtype))
            ok["bytes = 2 n ceil(d / n), bits = 16 d"] &= nbytes == 2 * N * chunk and bits == 16 * d
            ok["exchange_update = exchange + apply_step, bit for bit"] &= fused.tobytes() == plain.tobytes()
    for fact, value in ok.items():
        facts[f"{tag}/{fact}"] = bool(value)
    digests = {label: digest(*[a for r in res for a in r[:2]]) for label, res in results.items()}
    means = digest(*[r[0] for r in results["world"]])
    facts[f"{tag}/same bits on every rank"] = len(set(WORLD.allgather(means))) == 1
    facts[f"{tag}/rank order changes nothing"] = digests["world"] == digests["reversed"]


def check_non_finite(facts, comms, name, kernel) -> None:
    """Worker 1's v has a NaN, then an inf, then a value beyond the format's range at step 1: every
    rank's fail gets (1, whether its own v was bad)."""
    for bad in (np.nan, np.inf, 7e4 * N if name == "fp16" else 1e300):
        def poisoned(worker, d, step, dtype, bad=bad):
            v = vector(worker, d, step, dtype)
            if worker == 1 and step == 1:
                v[d // 2] = bad
            return v

        for label, comm in comms:
            everyone = where_ranks_stopped(lambda: exchanges(comm, name, 2 * N + 1, np.float64, poisoned))
            facts[f"{name}/{kernel}/{label}/{bad}: every rank fails at step 1, naming worker 1"] = (
                everyone == [[1, w == 1] for w in range(N)] or f"got {everyone}")


def check_alltoall(facts, comm) -> None:
    """Raw 16-bit words: block q of rank r's buffer lands in block r of rank q's; n - 1 blocks counted."""
    send = (np.arange(3 * N, dtype=np.uint16) + 1000 * WORKER).reshape(N, 3)
    recv = np.empty((N, 3), dtype=np.uint16)
    before = comm.bytes_sent
    comm.alltoall(send, recv)
    want = np.arange(3 * WORKER, 3 * WORKER + 3, dtype=np.uint16) + 1000 * np.arange(N, dtype=np.uint16)[:, None]
    facts["alltoall moves raw words block by block"] = bool(np.array_equal(recv, want))
    facts["alltoall counts the n - 1 blocks sent away"] = comm.bytes_sent - before == (N - 1) * 3 * 2


def main() -> None:
    comms = communicators()
    facts = {}
    check_alltoall(facts, comms[0][1])
    for kernel in KERNELS:
        os.environ["MPIOPT_KERNEL"] = kernel
        for name in ("fp16", "bf16"):
            for d in DIMS:
                for dtype in (np.float32, np.float64):
                    check(facts, name, kernel, d, dtype,
                          {label: exchanges(comm, name, d, dtype) for label, comm in comms})
            check_non_finite(facts, comms, name, kernel)
    write_facts(facts, sys.argv[1])


def write_facts(facts, path: str) -> None:
    """Rank 0 writes each fact: true when it held on every rank, else every rank's value."""
    everyone = WORLD.allgather(facts)
    if WORKER == 0:
        merged = {key: all(f[key] is True for f in everyone) or [f[key] for f in everyone] for key in facts}
        Path(path).write_text(json.dumps(merged, indent=1))


if __name__ == "__main__":
    main()
