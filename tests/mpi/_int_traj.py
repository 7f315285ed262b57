"""Helper of test_integer_methods.py (run under mpiexec): trajectories, plain and rank-reversed.

    mpiexec -n N python _int_traj.py DATA_DIR ITERS OUT.json METHODS VARIANT [VARIANT ...]

METHODS is ``all`` or a comma-separated list of the method names of CONFIGS to run. VARIANT is
``plain`` (COMM_WORLD) or ``reversed`` (``COMM_WORLD.Split(0, key=size-1-rank)``, each process
keeping its shard and noise stream through ``worker=`` its world rank). For each method
configuration and variant, rank 0 writes x_final (floats survive JSON exactly), the trace's wire
summary and bytes, and whether x was bitwise the same on every rank.
"""

import json
import sys

import numpy as np
from mpi4py import MPI

import mpiopt
from mpiopt.comm import MPICommunicator
from mpiopt.data import load_shard
from mpiopt.problems import LogisticProblem

CONFIGS = (
    ("intsgd", {}),
    ("intdiana", {}),
    ("vr-intdiana", {}),
    ("vr-intdiana", {"alpha": "fill", "feedback": "off"}),
    ("vr-intdiana", {"alpha": "paper"}),
    ("vr-intdiana", {"wire_dtype": "int16", "block_size": 40, "beta": 0.0, "alpha": "paper"}),
    ("intsgd", {"alpha": "constant", "alpha0": 3000.0}),  # auto promotes and shrinks
    ("hintsgd", {}),
    ("natsgd", {}),
    ("qsgd", {}),
    ("vr-diana", {"compressor": "nat"}),
    ("ef-signsgd", {}),  # biased compressors sum their decoded messages in worker order too
    ("dgc", {}),
    ("ef-sgd", {"compressor": "topk", "density": 0.05}),
    ("sgd", {"compressor": "bf16"}),
)

world = MPI.COMM_WORLD
rank, size = world.Get_rank(), world.Get_size()
data_dir, iters, out, only, variants = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5:]
A, b, meta = load_shard(data_dir, rank, size)
comms = {"plain": world, "reversed": world.Split(0, key=size - 1 - rank)}

report = {}
for method, opts in CONFIGS:
    if only != "all" and method not in only.split(","):
        continue
    label = method + "".join(f",{k}={v}" for k, v in opts.items())
    for variant in variants:
        comm = MPICommunicator(comms[variant])
        problem = LogisticProblem(A, b, meta["l2"], smoothness=meta["L_workers"][rank])
        res = mpiopt.minimize(problem, method, comm, iters=iters, batch=8, seed=5, L=meta["L"],
                              L_max=max(meta["L_workers"]), log_every=iters, worker=rank, **opts)
        rows = np.empty((size, res.x.size))
        world.Allgather(res.x, rows)
        if rank == 0:
            report[f"{label}|{variant}"] = {
                "x": res.x.tolist(),
                "same_on_all_ranks": bool((rows == rows[0]).all()),
                "wire": res.trace["wire"],
                "wire_bytes": res.trace["history"]["wire_bytes"][-1],
                "loss": res.trace["history"]["loss"],
            }

if rank == 0:
    with open(out, "w") as fh:
        json.dump(report, fh)
