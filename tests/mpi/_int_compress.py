"""Helper of test_integer_methods.py (run under mpiexec): compressor exchanges over real ranks.

    mpiexec -n 4 python _int_compress.py OUT.json

Rank 0 writes a JSON report: the int8-overflow case with a fixed and an ``auto`` wire dtype, the
exactness of the integer sum against the gathered Q_i, the worker-order means of nat/qsgd, and what
every rank raised when one rank's vector held a NaN.
"""

import json
import sys

import numpy as np
from mpi4py import MPI

from _gathered import gather_rows, same_everywhere
from mpiopt.comm import MPICommunicator
from mpiopt.compressors.integer import IntCompressor
from mpiopt.errors import RunError
from mpiopt.methods import make_method
from mpiopt.problems import LogisticProblem
from mpiopt.run import make_context

D = 50
world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()


def method_with(compressor: str, **opts):
    """A started vr-diana on a tiny random problem, to reach its compressor and raise_non_finite."""
    rng = np.random.default_rng(rank)
    problem = LogisticProblem(rng.standard_normal((20, D)), np.where(rng.random(20) < 0.5, -1.0, 1.0), 1e-2)
    ctx = make_context(problem, MPICommunicator(world), 0, 0.1, 4, 1.0, 1.0)
    meth = make_method("vr-diana", ctx, compressor=compressor, **opts)
    meth.start(np.zeros(D))
    meth.ctx.comm.bytes_sent = 0
    return meth


report = {}
x = np.zeros(D)
mean, local = np.empty(D), np.empty(D)

# 1. Each rank sends ~40 per coordinate: 4 * 40 = 160 > 127 would wrap int8.
v = 40.0 + 0.25 * rank + np.linspace(-0.4, 0.4, D)
for wire in ("int8", "auto"):
    meth = method_with("int", wire_dtype=wire, alpha="constant", alpha0=1.0, rounding="deterministic")
    comp = meth.comp
    comp.exchange(v, 1, x, meth.lr, mean, local)
    exact = gather_rows(np.rint(v)).sum(axis=0) / size
    clipped = world.allreduce(comp.clipped)
    report[wire] = {
        "clipped_total": clipped,
        "mean_min": float(mean.min()), "mean_max": float(mean.max()),
        "exact": bool(np.array_equal(mean, exact)),
        "bytes": meth.ctx.comm.bytes_sent,
        "summary": comp.summary(),
        "same_everywhere": same_everywhere(mean),
    }

# 2. Randomized rounding with auto: the sum of the integers is the exact sum of the Q_i.
meth = method_with("int", alpha="constant", alpha0=7.5)
comp = meth.comp
vr = np.random.default_rng(100 + rank).standard_normal(D) * 3
comp.exchange(vr, 2, x, meth.lr, mean, local)
level = int(comp.state["level"])
S = comp._buffer(level)[1].astype(np.int64)  # the summed integers, as received
q_rows = gather_rows(comp.quant.sent.astype(np.int64))  # every rank's Q_i
report["random_sum_exact"] = bool(np.array_equal(S, q_rows.sum(axis=0)))
report["random_mean_is_S_over_n_alpha"] = bool(np.array_equal(mean, S / (size * 7.5)))
report["random_level"] = str(comp._buffer(level)[0].dtype)

# 3. nat / qsgd / hint: the mean is the worker-order mean of every rank's own decoded C(v_i).
for name in ("nat", "qsgd", "hint", "none"):
    meth = method_with(name)
    meth.comp.exchange(vr, 3, x, meth.lr, mean, local)
    rows = gather_rows(local.copy())
    expected = rows[0].copy()
    for r in range(1, size):
        expected += rows[r]
    expected *= 1.0 / size
    report[f"{name}_mean"] = {"close": bool(np.allclose(mean, expected, rtol=1e-12, atol=1e-15)),
                              "same_everywhere": same_everywhere(mean)}

# 4. first_step='exponent': rank r's vector is scaled by 2^r; alpha = floor(127 / 4) / 2^e per block
#    with 2^e >= the largest |v| over all ranks, so the first step is already int8, exact, unclipped.
ve = np.random.default_rng(200 + rank).uniform(-1, 1, D) * 2.0 ** rank
ve[:10] *= 1e-3  # a block far smaller than the others gets its own, larger alpha
comp = IntCompressor(MPICommunicator(world), D, seed=1, worker=rank, fail=None, first_step="exponent",
                     block_starts=[0, 10])
comp.exchange(ve, 0, x, 0.1, mean, local)
peaks = [float(world.allreduce(np.abs(ve[lo:hi]).max(), op=MPI.MAX)) for lo, hi in ((0, 10), (10, D))]
report["exponent_first_step"] = {
    "alpha": comp.alpha_blocks.tolist(),
    "alpha_expected": [31.0 / 2.0 ** np.ceil(np.log2(p)) for p in peaks],
    "wire": comp.summary()["steps_by_wire"], "clipped": world.allreduce(comp.clipped),
    "bytes": comp.comm.bytes_sent,
    "sum_exact": bool(np.array_equal(comp._buffer(0)[1].astype(np.int64),
                                     gather_rows(comp.quant.sent.astype(np.int64)).sum(axis=0))),
    "same_everywhere": same_everywhere(mean),
}

# 5. A NaN on rank 2 only: every rank raises the same collective RunError naming rank 2.
bad = vr.copy()
if rank == 2:
    bad[7] = np.nan
errors = {}
for name, opts in (("int", {}), ("int", {"alpha0": 1.0}), ("int", {"alpha0": 1.0, "wire_dtype": "int8"}),
                   ("int", {"first_step": "exponent"}),
                   ("hint", {}), ("nat", {}), ("qsgd", {}), ("none", {})):
    meth = method_with(name, **opts)
    label = name + "".join(f",{k}={v}" for k, v in opts.items())
    try:
        meth.comp.exchange(bad, 5, x, meth.lr, mean, local)
        msg = None
    except RunError as exc:
        msg = f"collective={exc.collective}: {exc}"
    errors[label] = world.gather(msg)

if rank == 0:
    report["errors"] = errors
    with open(sys.argv[1], "w") as fh:
        json.dump(report, fh, indent=1)
