"""Helper of test_torch_comm.py: x_final of VR-IntDIANA on a5a shards, over mpi4py or torch.distributed.

    mpiexec -n N python _torch_minimize.py mpi DATA_DIR OUT.json
    (torchlaunch) python _torch_minimize.py torch DATA_DIR OUT.json

Rank 0 writes {"x": [float.hex of each coordinate], "trace": the trace's top-level facts}, so
the two backends' iterates can be compared to the last bit.
"""

import json
import sys

import mpiopt
from mpiopt.data import load_shard
from mpiopt.problems import LogisticProblem

ITERS = 200
# a constant alpha large enough that int8 overflows: auto climbs to int16 over MPI, to int32 over gloo
OPTIONS = {"seed": 3, "iters": ITERS, "log_every": ITERS, "alpha": "constant", "alpha0": 3000.0}


def main(backend: str, data_dir: str, out: str) -> None:
    if backend == "torch":
        from _torch_common import finish, init_gloo
        from mpiopt.torch.comm import TorchCommunicator

        init_gloo()
        comm = TorchCommunicator()
    else:
        comm = None  # MPI.COMM_WORLD
    comm = mpiopt.run.as_communicator(comm)
    A, b, meta = load_shard(data_dir, comm.rank, comm.size)
    problem = LogisticProblem(A, b, meta["l2"], smoothness=meta["L_workers"][comm.rank])
    res = mpiopt.minimize(problem, "vr-intdiana", comm, L=meta["L"], L_max=max(meta["L_workers"]), **OPTIONS)
    if comm.rank == 0:
        facts = {k: v for k, v in res.trace.items() if k not in ("history", "x_final", "env", "config")}
        with open(out, "w") as fh:
            json.dump({"x": [float(v).hex() for v in res.x], "trace": facts}, fh, default=str)
    if backend == "torch":
        finish()


if __name__ == "__main__":
    main(*sys.argv[1:4])
