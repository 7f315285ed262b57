"""Python overhead of one method step at d = 16 on one rank: where the vectors are tiny, what is left is
the Python and numpy-call cost of the step itself (the collectives on a one-rank communicator cost
next to nothing, and the problem hands back a stored gradient).

    python benchmarks/python_overhead.py [--d 16] [--steps 20000] [--repeats 7] [--json OUT]

The median over ``repeats`` of the mean microseconds per ``step`` is reported for each method, and
the same for the compressor's own SGD step alone (``exchange_update``: IntSGD's int compressor with
a constant alpha, and the float32 ``none`` compressor), the part of a step the core owns. The
same script runs against an older checkout (``PYTHONPATH=OLD python benchmarks/python_overhead.py``)
to compare a change with the code before it: it only uses ``make_context``, ``make_method``,
``start`` and ``step``, which both sides have.
"""

import argparse
import json
import statistics
import time

import numpy as np
from mpi4py import MPI

METHODS = ("sgd", "intsgd", "intdiana", "vr-intdiana", "l-svrg")


class StoredGradient:
    """A problem of d coordinates whose gradients are a stored vector (no arithmetic to time)."""

    def __init__(self, d: int):
        self.dim, self.n_samples = d, 1000
        self.g = np.linspace(-1.0, 1.0, d)

    def smoothness(self) -> float:
        return 1.0

    def sample_smoothness(self) -> float:
        return 1.0

    def loss(self, x):
        return 0.0

    def grad(self, x, out=None):
        out[...] = self.g
        return out

    def stochastic_grad(self, x, idx, out=None):
        out[...] = self.g
        return out


def communicator():
    try:
        from mpiopt.comm import MPICommunicator as Comm
    except ImportError:
        from mpiopt.comm import Communicator as Comm
    return Comm(MPI.COMM_SELF)


def time_method(name: str, d: int, steps: int, repeats: int) -> float:
    from mpiopt.methods import make_method
    from mpiopt.run import make_context

    problem = StoredGradient(d)
    ctx = make_context(problem, communicator(), 0, 1e-3, 8, 1.0, 1.0)
    method = make_method(name, ctx)
    x = np.zeros(d)
    method.start(x)
    if hasattr(method, "prepare"):
        method.prepare(x)
    per_step = []
    k = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            method.step(x, k)
            k += 1
        per_step.append((time.perf_counter() - t0) / steps * 1e6)
    return statistics.median(per_step)


def compressor(name: str, d: int, **opts):
    """The named compressor on a one-rank communicator (this checkout's constructor, or the older one
    that took ``lr``)."""
    def fail(k, local_bad):
        raise RuntimeError("non-finite")

    try:
        from mpiopt.compressors import compressor_class

        return compressor_class(name)(communicator(), d, seed=0, worker=0, fail=fail, **opts)
    except ImportError:
        from mpiopt.methods.compressors import compressor_class

        return compressor_class(name)(communicator(), d, seed=0, worker=0, lr=1e-3, fail=fail, **opts)


def time_exchange(comp, d: int, steps: int, repeats: int) -> float:
    v, x, mean = np.linspace(-1.0, 1.0, d), np.zeros(d), np.empty(d)
    per_step, k = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            comp.exchange_update(v, k, x, 1e-3, mean)
            k += 1
        per_step.append((time.perf_counter() - t0) / steps * 1e6)
    return statistics.median(per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    import mpiopt

    result = {"d": args.d, "steps": args.steps, "repeats": args.repeats, "package": mpiopt.__file__,
              "us_per_step": {name: time_method(name, args.d, args.steps, args.repeats) for name in METHODS}}
    exchanges = {"int exchange_update": compressor("int", args.d, alpha="constant", alpha0=100.0),
                 "none float32 exchange_update": compressor("none", args.d, float_dtype="float32")}
    for label, comp in exchanges.items():
        result["us_per_step"][label] = time_exchange(comp, args.d, args.steps, args.repeats)
    for name, us in result["us_per_step"].items():
        print(f"{name:30s} {us:7.2f} us per step")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
