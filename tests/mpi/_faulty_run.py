"""Test-only launcher: ``mpiopt run`` with a fault injected (the installed CLI has no such hook).

    mpiexec -n N python _faulty_run.py RANK:ITER[:MODE] run ARGS...

After iteration ITER, rank RANK raises an exception (MODE ``raise``, the default), dies by SIGKILL
(``kill``), or poisons its iterate with NaN so that its next gradient is non-finite (``nan``). The
fault goes in through ``mpiopt.commands.run.handle``'s callback, the same place minimize calls.
"""

import functools
import os
import signal
import sys

import numpy as np
from mpi4py import MPI

from mpiopt.cli import build_parser, dispatch
from mpiopt.commands import run


def injector(spec: str):
    rank, iteration, *mode = spec.split(":")
    rank, iteration, mode = int(rank), int(iteration), (mode or ["raise"])[0]
    me = MPI.COMM_WORLD.Get_rank()

    def fail(k: int, x: np.ndarray) -> bool:
        if me != rank or k != iteration:
            return False
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "nan":
            x[0] = np.nan
            return False
        raise RuntimeError(f"injected failure at iteration {k} ({spec})")

    return fail


if __name__ == "__main__":
    args = build_parser().parse_args(sys.argv[2:])
    args.handler = functools.partial(run.handle, callback=injector(sys.argv[1]))
    sys.exit(dispatch(args))
