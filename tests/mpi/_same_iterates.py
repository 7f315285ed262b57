"""Helper of test_same_iterates.py (run under mpiexec): x_final of every method on a5a, as hex floats.

    mpiexec -n 6 python _same_iterates.py DATA_DIR OUT.json plain|second

For each configuration of CONFIGS (seed 3, 400 iterations, each method's defaults otherwise) rank 0
writes ``runs``: ``{label: {"x": [float.hex of each coordinate of x_final], "x_early": the same of x
after iteration 30, "f_gap_tail": float.hex of the mean f - f* over the last 100 iterations (logged
every 20), "compressor": its name, "reversed": bool}}``, and ``cpu``: the numpy SIMD targets and the
OpenBLAS kernels this run used.

``plain`` runs straight through on COMM_WORLD. ``second`` is the same-machine second run the test
compares bit for bit with ``plain``: every configuration stops at iteration 200 with a checkpoint
and is resumed to 400 in the same job, and where the compressor's sum does not depend on the rank
order (every collective but a float MPI Allreduce, whose association is the MPI library's) the ranks
are reversed (``COMM_WORLD.Split(0, key=size-1-rank)``, each process keeping its shard and noise
stream through ``worker=`` its world rank).
"""

import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

import mpiopt
from mpiopt.comm import MPICommunicator
from mpiopt.compressors.base import REGISTRY
from mpiopt.data import load_shard
from mpiopt.methods import METHODS
from mpiopt.problems import LogisticProblem

ITERS = 400
EARLY = 30
"""x_early is x after this iteration."""
LOG_EVERY = 20
TAIL = 100
"""f_gap_tail averages the logged f - f* of the last TAIL iterations (iterations 300, 320, ..., 400)."""
CONFIGS = (
    ("gd", {}),
    ("sgd", {}),
    ("sgd", {"float_dtype": "float32"}),
    ("l-svrg", {}),
    ("l-svrg", {"float_dtype": "float32"}),
    ("diana", {}),
    ("diana", {"compressor": "nat"}),
    ("vr-diana", {}),
    ("vr-diana", {"compressor": "qsgd", "levels": 15}),
    ("intsgd", {}),
    ("intsgd", {"block_size": 16, "rounding": "deterministic"}),
    ("intsgd", {"wire_dtype": "int8", "alpha": "constant", "alpha0": 2000.0}),
    ("intdiana", {}),
    ("vr-intdiana", {}),
    ("vr-intdiana", {"wire_dtype": "int16", "beta": 0.0, "alpha0": 50.0}),
    ("hintsgd", {}),
    ("hintsgd", {"bits": 8}),
    ("natsgd", {}),
    ("qsgd", {}),
    ("powersgd", {}),
    ("powersgd", {"rank": 3, "momentum": 0.5}),
    ("ef-signsgd", {}),
    ("dgc", {}),
)

PINNED = {"vr-intdiana": {"alpha": "paper", "feedback": "off"}}
"""Options given beside each config's own, outside its label: the stored iterates were made with
these, the IntSGD paper's VR-IntDIANA (its default became alpha 'fill', then 'exponent' with the
feedback, after they were stored)."""

STEP = {
    "sgd": "0x1.16992ab172135p+2",
    "sgd,float_dtype=float32": "0x1.16992ab172135p+2",
    "diana": "0x1.16992ab172135p+2",
    "diana,compressor=nat": "0x1.0b7451f2071ccp+2",
    "intsgd": "0x1.16992ab172135p+2",
    "intsgd,block_size=16,rounding=deterministic": "0x1.16992ab172135p+2",
    "intsgd,alpha=constant,alpha0=2000.0,wire_dtype=int8": "0x1.16992ab172135p+2",
    "intdiana": "0x1.16992ab172135p+2",
    "hintsgd": "0x1.16992ab172135p+2",
    "hintsgd,bits=8": "0x1.16992ab172135p+2",
    "natsgd": "0x1.0b7451f2071ccp+2",
    "qsgd": "0x1.15e453e3d8ee3p+2",
    "powersgd": "0x1.16992ab172135p+2",
    "powersgd,momentum=0.5,rank=3": "0x1.16992ab172135p+2",
    "ef-signsgd": "0x1.16992ab172135p+2",
    "dgc": "0x1.bdc1dde8b6853p-2",
}
"""The step (float.hex) each minibatch configuration ran with when it was stored: the default of the time,
1 / (2 L_max (1 + 2 omega / n)), passed as lr= (not part of the label) since the default follows the batch."""


def label(method, opts):
    return method + "".join(f",{k}={v}" for k, v in sorted(opts.items()))


def hexes(x):
    return [float(v).hex() for v in x]


def compressor_of(method, opts):
    """The compressor a configuration runs (as mpiopt.methods.composed picks it; the run's trace confirms)."""
    recipe, fixed = METHODS[method]
    return recipe.compressor or fixed.get("compressor") or opts.get("compressor", recipe.default_compressor)


def cpu():
    """numpy's enabled SIMD dispatch targets and OpenBLAS's kernel set (what NPY_DISABLE_CPU_FEATURES
    and OPENBLAS_CORETYPE change)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__
    from threadpoolctl import threadpool_info

    blas = sorted(str(lib.get("architecture")) for lib in threadpool_info() if lib.get("internal_api") == "openblas")
    return {"numpy": sorted(t for t in __cpu_dispatch__ if __cpu_features__.get(t)), "openblas": blas}


def run(problem, method, opts, comm, worker, meta, second, ckpt):
    """One configuration: (its result, x after iteration EARLY); ``second`` stops at ITERS / 2 with a
    checkpoint and resumes to ITERS."""
    common = dict(iters=ITERS, seed=3, L=meta["L"], L_max=max(meta["L_workers"]), f_star=meta["f_star"],
                  log_every=LOG_EVERY, worker=worker, **opts, **PINNED.get(method, {}))
    if label(method, opts) in STEP:
        common["lr"] = float.fromhex(STEP[label(method, opts)])
    early = []
    stop = ITERS // 2 if second else ITERS + 1

    def watch(k, x):
        if k == EARLY:
            early.append(x.copy())
        return k == stop

    if not second:
        return mpiopt.minimize(problem, method, comm, callback=watch, **common), early[0]
    saving = dict(checkpoint_dir=ckpt, checkpoint_every=stop)
    first = mpiopt.minimize(problem, method, comm, callback=watch, **saving, **common)
    assert first.status == "callback", first.message
    res = mpiopt.minimize(problem, method, comm, resume=True, **saving, **common)
    assert res.trace["resumed_from"] == stop, res.trace.get("resumed_from")
    return res, early[0]


def main(data_dir, out, variant):
    if variant not in ("plain", "second"):
        raise SystemExit(f"variant must be plain or second, got {variant!r}")
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    reversed_ = MPICommunicator(world.Split(0, key=size - 1 - rank))
    A, b, meta = load_shard(data_dir, rank, size)
    second = variant == "second"
    runs = {}
    for i, (method, opts) in enumerate(CONFIGS):
        problem = LogisticProblem(A, b, meta["l2"], smoothness=meta["L_workers"][rank])
        compressor = compressor_of(method, opts)
        flip = second and REGISTRY[compressor].collective != "allreduce_float"
        comm, ckpt = reversed_ if flip else world, Path(out).with_suffix(f".ckpt{i}")
        res, x_early = run(problem, method, opts, comm, rank, meta, second, ckpt)
        assert res.trace["config"]["compressor"] == compressor, (method, opts, res.trace["config"]["compressor"])
        gaps = res.trace["history"]["f_gap"][-(TAIL // LOG_EVERY + 1):]
        runs[label(method, opts)] = {"x": hexes(res.x), "x_early": hexes(x_early),
                                     "f_gap_tail": float(np.mean(gaps)).hex(), "compressor": compressor,
                                     "reversed": flip, "wire_bytes": int(res.trace["history"]["wire_bytes"][-1])}
    if rank == 0:
        with open(out, "w") as fh:
            json.dump({"cpu": cpu(), "runs": runs}, fh, indent=0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
