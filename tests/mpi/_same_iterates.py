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


def main(data_dir, out):
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    A, b, meta = load_shard(data_dir, rank, size)
    report = {}
    for method, opts in CONFIGS:
        problem = LogisticProblem(A, b, meta["l2"], smoothness=meta["L_workers"][rank])
        step = {"lr": float.fromhex(STEP[label(method, opts)])} if label(method, opts) in STEP else {}
        res = mpiopt.minimize(problem, method, world, iters=ITERS, seed=3, L=meta["L"],
                              L_max=max(meta["L_workers"]), log_every=ITERS, **opts, **step)
        report[label(method, opts)] = [float(v).hex() for v in res.x]
    if rank == 0:
        with open(out, "w") as fh:
            json.dump(report, fh, indent=0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
