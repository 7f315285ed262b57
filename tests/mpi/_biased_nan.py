"""``mpiexec -n N python _biased_nan.py DATA OUT.json``: rank 1 poisons its iterate with NaN after
iteration 5; every rank of every biased method must stop with the same RunError naming rank 1."""

import json
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mpiopt  # noqa: E402
from _biased_common import local_problem  # noqa: E402
from mpiopt.errors import RunError  # noqa: E402


def main() -> None:
    data, out = sys.argv[1], sys.argv[2]
    comm = MPI.COMM_WORLD
    problem = local_problem(data, comm.Get_rank(), comm.Get_size())

    def poison(k, x):
        if comm.Get_rank() == 1 and k == 5:
            x[0] = np.nan
        return False

    report = {}
    for method in ("ef-signsgd", "dgc", "powersgd"):
        try:
            mpiopt.minimize(problem, method, comm, iters=20, callback=poison)
            message = "no error"
        except RunError as exc:
            message = str(exc)
        report[method] = comm.allgather(message)  # test-side control message only
    if comm.Get_rank() == 0:
        Path(out).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
