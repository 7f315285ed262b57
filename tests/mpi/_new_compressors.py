"""``mpiexec -n 3 python _new_compressors.py OUT.json``: the fp16, bf16, topk and dgc exchanges on real
ranks, against references computed here in numpy from every worker's vector (each rank can rebuild
them: vector(worker, d, step) is seeded by worker and step).

Each exchange runs twice: on COMM_WORLD and on a communicator whose rank order is reversed (worker ids
kept). Rank 0 writes ``{fact: true/false or a description}``; the test wants every fact true.
"""

import hashlib
import sys

import numpy as np
from mpi4py import MPI

from _half_sum import fail, fp16_mean, where_ranks_stopped, write_facts
from mpiopt.comm import MPICommunicator
from mpiopt.compressors import fp16, topk  # noqa: F401 -- registered by importing
from mpiopt.compressors.base import REGISTRY
from mpiopt.compressors.bf16 import bf16_bits, bf16_to_float32
from mpiopt.compressors.dgc import density_at
from mpiopt.compressors.sparse import count_for

STEPS = 5
D = 123
SEED = 7
WORLD = MPI.COMM_WORLD
N, WORKER = WORLD.Get_size(), WORLD.Get_rank()


def vector(worker: int, d: int, step: int) -> np.ndarray:
    return 3.0 * np.random.default_rng([worker, step, d]).standard_normal(d)


def digest(*arrays) -> str:
    return hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)).hexdigest()


def communicators():
    """(label, Communicator): the world order and the reversed one."""
    return [("world", MPICommunicator(WORLD)), ("reversed", MPICommunicator(WORLD.Split(0, key=N - 1 - WORKER)))]


def run(comm, name: str, d: int, opts: dict, vectors=vector):
    """Exchanges of STEPS steps: per step (mean, local, bytes counted, bits, sent indices or None)."""
    comp = REGISTRY[name](comm, d, seed=SEED, worker=WORKER, fail=fail, **opts)
    out = []
    for k in range(STEPS):
        mean, local = np.empty(d), np.empty(d)
        before = comm.bytes_sent
        comp.exchange(vectors(WORKER, d, k), k, np.zeros(d), 0.1, mean, local)
        sent = getattr(comp, "sent_indices", None)
        out.append((mean, local, comm.bytes_sent - before, comp.bits, None if sent is None else np.array(sent)))
    return out


def same_everywhere(value: str) -> bool:
    return len(set(WORLD.allgather(value))) == 1


def check_fp16(facts, results) -> None:
    for label, res in results.items():
        ok_mean = ok_local = ok_bytes = True
        for k, (mean, local, nbytes, bits, _) in enumerate(res):
            halves = [(vector(w, D, k) / N).astype(np.float16) for w in range(N)]
            ok_mean &= bool(np.array_equal(mean, fp16_mean([vector(w, D, k) for w in range(N)], np.float64)))
            ok_local &= bool(np.array_equal(local, N * halves[WORKER].astype(np.float64)))
            ok_bytes &= nbytes == 2 * D and bits == 16 * D
        facts[f"fp16/{label}/bytes 2d"] = ok_bytes
        facts[f"fp16/{label}/mean = fp16(float32 worker-order sum of fp16(v_i / n))"] = ok_mean
        facts[f"fp16/{label}/local is n fp16(v / n)"] = ok_local
        facts[f"fp16/{label}/same bits on every rank"] = same_everywhere(digest(*[r[0] for r in res]))


def exact_vector(worker: int, d: int, step: int) -> np.ndarray:
    """v / n is a multiple of 2**-6 below 2**5 in magnitude: every float16 sum of three is exact."""
    ints = np.random.default_rng([worker, step]).integers(-600, 600, d)
    return N * ints * 2.0 ** -6


def check_fp16_exact(facts, comms) -> None:
    digests = {}
    for label, comm in comms:
        res = run(comm, "fp16", D, {}, exact_vector)
        ok = all(np.array_equal(mean, sum(exact_vector(w, D, k) / N for w in range(N)))
                 for k, (mean, *_rest) in enumerate(res))
        facts[f"fp16/{label}/exact sums are exact"] = ok
        digests[label] = digest(*[r[0] for r in res])
    facts["fp16/rank order changes nothing (exact sums)"] = digests["world"] == digests["reversed"]


def rounded_bf16(v: np.ndarray) -> np.ndarray:
    """bf16(float32(v)) as float32, by torch when it is there (an independent reference)."""
    f32 = v.astype(np.float32)
    try:
        import torch
    except ImportError:
        return bf16_to_float32(bf16_bits(f32, np.empty(v.size, np.uint16), np.empty(v.size, np.uint32)),
                               np.empty(v.size, np.float32))
    return torch.from_numpy(f32).to(torch.bfloat16).to(torch.float32).numpy()


def check_bf16(facts, results) -> None:
    for label, res in results.items():
        ok_mean = ok_local = ok_bytes = True
        for k, (mean, local, nbytes, bits, _) in enumerate(res):
            rows = [rounded_bf16(vector(w, D, k)) for w in range(N)]
            total = rows[0].copy()
            for row in rows[1:]:
                total += row  # float32, worker order
            ok_mean &= mean.tobytes() == (rounded_bf16(total).astype(np.float64) * (1.0 / N)).tobytes()
            ok_local &= local.tobytes() == rows[WORKER].astype(np.float64).tobytes()
            ok_bytes &= nbytes == 2 * D and bits == 16 * D
        facts[f"bf16/{label}/bytes 2d"] = ok_bytes
        facts[f"bf16/{label}/mean = bf16(float32 worker-order sum) / n, bit for bit"] = ok_mean
        facts[f"bf16/{label}/local = bf16(v)"] = ok_local


def top(v: np.ndarray, c: int) -> np.ndarray:
    return np.sort(np.argsort(-np.abs(v), kind="stable")[:c])


def dense(v: np.ndarray, idx: np.ndarray, dtype) -> np.ndarray:
    out = np.zeros(v.size)
    out[idx] = v[idx].astype(dtype)
    return out


def check_sparse(facts, results, tag: str, d: int, counts, dtype, header: int) -> None:
    """topk / dgc: counts, bytes, the dense worker-order mean of what every rank sent."""
    pair = 4 + np.dtype(dtype).itemsize
    for label, res in results.items():
        ok_count = ok_mean = ok_local = ok_bytes = True
        for k, (mean, local, nbytes, bits, sent) in enumerate(res):
            all_sent = WORLD.allgather(sent)  # test-side control message, in world (= worker) order
            ok_count &= sent.size == counts(k) and np.array_equal(sent, top(vector(WORKER, d, k), sent.size))
            total = np.zeros(d)
            for w in range(N):
                total += dense(vector(w, d, k), all_sent[w], dtype)
            ok_mean &= mean.tobytes() == (total * (1.0 / N)).tobytes()
            ok_local &= local.tobytes() == dense(vector(WORKER, d, k), sent, dtype).tobytes()
            ok_bytes &= nbytes == header + pair * sent.size and bits == 8 * nbytes
        facts[f"{tag}/{label}/sends the count asked for, its largest |v|"] = ok_count
        facts[f"{tag}/{label}/mean = dense worker-order mean, bit for bit"] = ok_mean
        facts[f"{tag}/{label}/local = own pairs, dense"] = ok_local
        facts[f"{tag}/{label}/bytes = header + pairs"] = ok_bytes


def check_sampled_dgc(facts, comms) -> None:
    """d large enough that the threshold is sampled: at most count(k) pairs, reproducible per worker."""
    d, opts = 5000, {"density": 0.01, "warmup_iters": 2, "warmup_density": 0.1}
    digests = {}
    for label, comm in comms:
        res = run(comm, "dgc", d, opts)
        count = [count_for(density_at(k, 0.01, 2, 0.1), d) for k in range(STEPS)]
        facts[f"dgc-sampled/{label}/0 < sent <= count"] = all(0 < r[4].size <= c for r, c in zip(res, count))
        facts[f"dgc-sampled/{label}/same bits on every rank"] = same_everywhere(digest(*[r[0] for r in res]))
        digests[label] = digest(*[a for r in res for a in (r[0], r[4])])
    facts["dgc-sampled/rank order changes nothing"] = digests["world"] == digests["reversed"]


def check_nan(facts, comms) -> None:
    """Worker 1's v is NaN at step 2: every rank's fail gets (2, this worker's v was bad)."""
    def poisoned(worker, d, step):
        v = vector(worker, d, step)
        if worker == 1 and step == 2:
            v[5] = np.nan
        return v

    for name, opts in (("fp16", {}), ("bf16", {}), ("topk", {"density": 0.05}), ("dgc", {"warmup_iters": 3})):
        for label, comm in comms:
            everyone = where_ranks_stopped(lambda: run(comm, name, D, opts, poisoned))
            facts[f"nan/{name}/{label}/every rank fails at step 2, naming worker 1"] = (
                everyone == [[2, w == 1] for w in range(N)] or f"got {everyone}")


def reorder_proof(results) -> bool:
    """Whether the reversed rank order gave the world order's means and locals, bit for bit."""
    world, reversed_ = ([a for r in results[label] for a in r[:2]] for label in ("world", "reversed"))
    return digest(*world) == digest(*reversed_)


def main() -> None:
    comms = communicators()
    facts = {}

    def both(name, d, opts):
        return {label: run(comm, name, d, opts) for label, comm in comms}

    check_fp16(facts, both("fp16", D, {}))
    gathered = {"bf16": both("bf16", D, {})}
    check_bf16(facts, gathered["bf16"])
    k = count_for(0.05, D)
    for dtype in ("float64", "float32"):
        gathered[f"topk-{dtype}"] = both("topk", D, {"density": 0.05, "float_dtype": dtype})
        check_sparse(facts, gathered[f"topk-{dtype}"], f"topk-{dtype}", D, lambda step: k, dtype, header=0)
    gathered["dgc"] = both("dgc", D, {"density": 0.02, "warmup_iters": 3, "warmup_density": 0.3})
    check_sparse(facts, gathered["dgc"], "dgc", D, lambda step: count_for(density_at(step, 0.02, 3, 0.3), D),
                 "float64", header=4)
    for tag, results in gathered.items():
        facts[f"{tag}/rank order changes nothing"] = reorder_proof(results)
        facts[f"{tag}/same bits on every rank"] = same_everywhere(digest(*[r[0] for r in results["world"]]))
    check_fp16_exact(facts, comms)
    check_sampled_dgc(facts, comms)
    check_nan(facts, comms)
    write_facts(facts, sys.argv[1])


if __name__ == "__main__":
    main()
