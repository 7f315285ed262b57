"""Python overhead of one method step at d = 16 on one rank: where the vectors are tiny, what is left is
the Python and numpy-call cost of the step itself (the collectives on a one-rank communicator cost
next to nothing, and the problem hands back a stored gradient).

    python benchmarks/python_overhead.py [--d 16] [--steps 20000] [--repeats 7] [--kernel numpy|numba] [--json OUT]

The median over ``repeats`` of the mean microseconds per ``step`` is reported for each method (all
of them timed in turns, see ``harness.interleaved``), and the same for the compressor's own SGD step alone (``exchange_update``: IntSGD's int compressor with
a constant alpha, and the float32 ``none`` compressor), the part of a step the core owns. The
same script runs against an older checkout (``PYTHONPATH=OLD python benchmarks/python_overhead.py``)
to compare a change with the code before it: it only uses ``make_context``, ``make_method``,
``start`` and ``step``, which both sides have. ``--kernel`` picks the integer methods' quantizer
kernel (as ``MPIOPT_KERNEL`` does; default: the package's choice for d, numpy below 4096
coordinates); the JSON records which ran and each method's time over sgd's.
"""

import argparse
import itertools
import os
import statistics
import sys
from pathlib import Path
from typing import Callable, Optional

import mpiopt  # before harness puts this checkout first on the path: PYTHONPATH=OLD picks the package
import numpy as np
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import interleaved, mean_seconds, write_json  # noqa: E402

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


def method_step(name: str, d: int) -> Callable[[], None]:
    """One step of the named method at a time, started on the stored-gradient problem."""
    from mpiopt.methods import make_method
    from mpiopt.run import make_context

    problem = StoredGradient(d)
    ctx = make_context(problem, communicator(), 0, 1e-3, 8, 1.0, 1.0)
    method = make_method(name, ctx)
    x = np.zeros(d)
    method.start(x)
    if hasattr(method, "prepare"):
        method.prepare(x)
    k = itertools.count()
    return lambda: method.step(x, next(k))


def kernel_for(d: int) -> Optional[str]:
    """The quantizer kernel the integer methods take at d (None: a checkout without the choice)."""
    try:
        from mpiopt.kernels import cpu_kernel
    except ImportError:
        return None
    return cpu_kernel(size=d)


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


def exchange_step(comp, d: int) -> Callable[[], None]:
    """One ``exchange_update`` (an SGD step) of the compressor at a time."""
    v, x, mean = np.linspace(-1.0, 1.0, d), np.zeros(d), np.empty(d)
    k = itertools.count()
    return lambda: comp.exchange_update(v, next(k), x, 1e-3, mean)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--kernel", choices=("numpy", "numba"), help="the integer methods' kernel (default: the "
                        "package's choice for d)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    if args.kernel:
        os.environ["MPIOPT_KERNEL"] = args.kernel
    steps = {name: method_step(name, args.d) for name in METHODS}
    steps["int exchange_update"] = exchange_step(compressor("int", args.d, alpha="constant", alpha0=100.0), args.d)
    steps["none float32 exchange_update"] = exchange_step(compressor("none", args.d, float_dtype="float32"), args.d)
    times = interleaved([mean_seconds(fn, args.steps) for fn in steps.values()], args.repeats)
    us = {name: statistics.median(ts) * 1e6 for name, ts in zip(steps, times)}
    result = {"d": args.d, "steps": args.steps, "repeats": args.repeats, "package": mpiopt.__file__,
              "kernel": kernel_for(args.d),
              "us_per_step": us, "over_sgd": {name: us[name] / us["sgd"] for name in METHODS}}
    print(f"integer methods' kernel: {result['kernel']}")
    for name, t in us.items():
        over = f"  ({result['over_sgd'][name]:.2f}x sgd)" if name in METHODS else ""
        print(f"{name:30s} {t:7.2f} us per step{over}")
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
