"""``mpiexec -n N python _biased_run.py DATA ITERS SEED OUT.json``: the biased baselines through
``mpiopt.minimize`` on a real LIBSVM problem, with SGD and full-rank PowerSGD as references."""

import json
import sys
from pathlib import Path

from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mpiopt  # noqa: E402
from _biased_common import check_same_on_all_ranks, local_problem  # noqa: E402

RUNS = {
    "sgd": ("sgd", {}),
    "ef-signsgd": ("ef-signsgd", {}),
    "dgc": ("dgc", {}),
    "dgc-f32-clip": ("dgc", {"float_dtype": "float32", "clip_norm": 1.0, "warmup_iters": 0, "density": 0.05}),
    "powersgd": ("powersgd", {}),
    "powersgd-full": ("powersgd", {"rank": 11}),
}


def main() -> None:
    data, iters, seed, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    comm = MPI.COMM_WORLD
    problem = local_problem(data, comm.Get_rank(), comm.Get_size())
    report = {"n": comm.Get_size(), "d": problem.dim, "iters": iters, "runs": {}}
    for label, (method, options) in RUNS.items():
        res = mpiopt.minimize(problem, method, comm, iters=iters, seed=seed, log_every=iters // 5, **options)
        h = res.trace["history"]
        report["runs"][label] = {
            "loss": h["loss"], "wire_bytes": h["wire_bytes"], "iteration": h["iteration"],
            "info_bits": h["info_bits"], "x_final": res.trace["x_final"], "config": res.trace["config"],
            "same_on_all_ranks": check_same_on_all_ranks(comm, res.x),
        }
    if comm.Get_rank() == 0:
        Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
