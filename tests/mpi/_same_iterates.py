"""Helper of test_same_iterates.py (run under mpiexec): x_final of every method on a5a, as hex floats.

    mpiexec -n 6 python _same_iterates.py DATA_DIR OUT.json

Rank 0 writes {label: [float.hex of each coordinate of x_final]} for CONFIGS (seed 3, 400
iterations, each method's defaults otherwise), so the stored file pins iterates to the last bit.
"""

import json
import sys

from mpi4py import MPI

import mpiopt
from mpiopt.data import load_shard
from mpiopt.problems import LogisticProblem

ITERS = 400
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

PINNED = {"vr-intdiana": {"alpha": "paper"}}
"""Options given beside each config's own, outside its label: the stored iterates were made with
these (vr-intdiana's default alpha became 'fill' after they were stored)."""


def label(method, opts):
    return method + "".join(f",{k}={v}" for k, v in sorted(opts.items()))


def main(data_dir, out):
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    A, b, meta = load_shard(data_dir, rank, size)
    report = {}
    for method, opts in CONFIGS:
        problem = LogisticProblem(A, b, meta["l2"], smoothness=meta["L_workers"][rank])
        res = mpiopt.minimize(problem, method, world, iters=ITERS, seed=3, L=meta["L"],
                              L_max=max(meta["L_workers"]), log_every=ITERS, **opts, **PINNED.get(method, {}))
        report[label(method, opts)] = [float(v).hex() for v in res.x]
    if rank == 0:
        with open(out, "w") as fh:
            json.dump(report, fh, indent=0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
