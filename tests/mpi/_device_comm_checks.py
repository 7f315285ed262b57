"""Helper of test_device_comm.py: DeviceCommunicator and the int compressor on device arrays, n ranks.

    mpiexec -n N python _device_comm_checks.py rules|cupy staged|direct OUT.json

``rules``: the CuPy-rules module of tests/_cupy_rules.py (CPU; the kernels' numpy twins), ``cupy``:
CuPy on the GPU (ranks share it). ``staged`` goes through host buffers, ``direct`` hands the device
buffers to a CUDA-aware MPI. Every collective's result is asserted on every rank (a failed assert
exits non-zero); rank 0 writes what the int compressor did to OUT.json.
"""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mpiopt.comm import MPICommunicator  # noqa: E402
from mpiopt.compressors.integer import IntCompressor  # noqa: E402
from mpiopt.device_comm import DeviceCommunicator  # noqa: E402


def fail(k, local_bad):
    raise AssertionError(f"unexpected non-finite values at step {k}")


def collectives(xp, cuda_aware: bool, host: MPICommunicator) -> None:
    dev = DeviceCommunicator(host, cuda_aware=cuda_aware, xp=xp)
    r, n = dev.rank, dev.size
    assert n >= 2, "a collective at one rank is a no-op: run this with mpiexec -n 2 or more"
    buf = xp.asarray(np.arange(-50, 50, dtype=np.int8) // n + r)
    dev.allreduce_int(buf)
    assert xp.asnumpy(buf).tolist() == (np.arange(-50, 50) // n * n + n * (n - 1) // 2).tolist()
    assert host.bytes_sent == 100 and dev.bytes_sent == 100
    f = xp.asarray(np.linspace(0.0, 1.0, 33) * (r + 1))
    dev.allreduce_float(f)
    np.testing.assert_allclose(xp.asnumpy(f), np.linspace(0.0, 1.0, 33) * (n * (n + 1) // 2), rtol=1e-15)
    rows = xp.empty((n, 3))
    dev.allgather(xp.asarray(np.full(3, float(r))), rows)
    assert xp.asnumpy(rows).tolist() == [[float(i)] * 3 for i in range(n)]
    counts = np.arange(1, n + 1)
    got = xp.empty(int(counts.sum()), dtype=np.int32)
    dev.allgatherv(xp.asarray(np.full(r + 1, r, dtype=np.int32)), got, counts)
    assert xp.asnumpy(got).tolist() == np.repeat(np.arange(n), counts).tolist()
    top = xp.asarray(np.full(2, r, dtype=np.int64))
    dev.allreduce_max(top)
    assert xp.asnumpy(top).tolist() == [n - 1] * 2
    plain = np.array([r], dtype=np.int64)
    assert dev.allreduce_max(plain) is plain and plain[0] == n - 1  # numpy control buffers pass unchanged
    root = xp.asarray(np.full(4, float(r)))
    dev.broadcast(root, root=1)
    assert xp.asnumpy(root).tolist() == [1.0] * 4


def int_steps(xp, cuda_aware: bool, host: MPICommunicator, d: int = 20_011, steps: int = 6) -> dict:
    """IntSGD's exchange on device arrays, first_step='exponent' with layer blocks: each rank's mean,
    hashed, must be every rank's; the first step's mean must be the numpy kernel's, bit for bit."""
    dev = DeviceCommunicator(host, cuda_aware=cuda_aware, xp=xp)
    opts = dict(first_step="exponent", block_starts=[0, 9, 5000, 12_000])
    comp = IntCompressor(dev, d, seed=7, worker=dev.rank, fail=fail, xp=xp, **opts)
    cpu = IntCompressor(host, d, seed=7, worker=dev.rank, fail=fail, kernel="numpy", **opts)
    rng = np.random.default_rng(100 + dev.rank)
    x, mean = xp.zeros(d), xp.empty(d)
    x_cpu, mean_cpu = np.zeros(d), np.empty(d)
    digests = []
    for k in range(steps):
        g = rng.standard_normal(d) * (1 + k)
        comp.exchange(xp.asarray(g), k, x, 0.05, mean, None)
        got = xp.asnumpy(mean)
        if k == 0:
            cpu.exchange(g, k, x_cpu, 0.05, mean_cpu, None)
            assert got.tobytes() == mean_cpu.tobytes(), "the first step's mean differs from the CPU kernel's"
        digests.append(hashlib.sha256(got.tobytes()).hexdigest())
        x -= 0.05 * mean
    every = host.allgather_object(digests)
    assert all(d == every[0] for d in every), "the ranks decoded different means"
    return {"steps": steps, "redone_steps": int(comp.state["redone_steps"]),
            "steps_by_wire": comp.summary()["steps_by_wire"], "same_on_all_ranks": True}


def main() -> None:
    module, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
    if module == "rules":
        import _cupy_rules as xp
    else:
        import cupy as xp

        xp.cuda.Device(MPI.COMM_WORLD.Get_rank() % xp.cuda.runtime.getDeviceCount()).use()
    host = MPICommunicator()
    collectives(xp, mode == "direct", host)
    report = int_steps(xp, mode == "direct", MPICommunicator())
    if host.rank == 0:
        Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
