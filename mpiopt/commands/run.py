"""``mpiopt run``: each rank loads its shard, runs a method, rank 0 writes the trace JSON.

Launched as ``mpiexec -n N mpiopt run --data DIR --method NAME --out TRACE.json``; N must equal the
number of workers the data was preprocessed for.
"""

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

from mpiopt.comm import Communicator
from mpiopt.errors import InputError, RunError, quoted
from mpiopt.failfast import abort_on_error, agree_or_raise
from mpiopt.methods import METHODS
from mpiopt.problems.logistic import LogisticProblem
from mpiopt.run import minimize
from mpiopt.trace import write_json

METHOD_OPTIONS = (
    # flag, type, choices, help; passed to the method only when given, as flag_with_underscores.
    ("--wire-dtype", str, ("int8", "int16", "int32", "int64", "auto"), "integer type on the wire (integer methods)"),
    ("--rounding", str, ("random", "deterministic"), "integer rounding: unbiased random or round-half-even"),
    ("--alpha", str, ("adaptive", "constant"), "scaling rule of the integer methods"),
    ("--block-size", int, None, "coordinates per alpha block (block alpha, Alg. 2)"),
    ("--compressor", str, ("none", "int", "hint", "nat", "qsgd"), "compressor of diana / vr-diana"),
    ("--float-dtype", str, ("float32", "float64"), "float type on the wire (full-precision methods, dgc values, powersgd matrices)"),
    ("--momentum", float, None, "momentum factor (dgc: momentum correction, default 0.9; powersgd: default 0)"),
    ("--density", float, None, "dgc: fraction of coordinates each rank sends per step (default 0.01, at least 1)"),
    ("--warmup-iters", int, None, "dgc: iterations of sparsity warm-up (default 100; 0 turns it off)"),
    ("--warmup-density", float, None, "dgc: density at iteration 0, decaying geometrically to --density (default 0.25)"),
    ("--clip-norm", float, None, "dgc: clip each rank's stochastic gradient to this norm (default: no clipping)"),
    ("--rank", int, None, "powersgd: rank r of the gradient approximation (default 2)"),
    ("--alpha0", float, None, "integer methods: alpha of the first step (else it sends floats) and of "
                              "--alpha constant"),
    ("--beta", float, None, "integer methods: moving-average factor of adaptive alpha's r_k (default 0.9)"),
    ("--eps", float, None, "integer methods: eps of adaptive alpha = eta sqrt(d) / sqrt(2 n r_k + eta^2 eps^2) "
                           "(default 1e-8)"),
    ("--p", float, None, "l-svrg / vr-diana: probability of resetting the reference point "
                         "(default batch / shard size)"),
    ("--levels", int, None, "qsgd: number of levels s (default 127, int8 on the wire; up to 32767, int16)"),
    ("--bits", int, None, "hintsgd / hint compressor: integer bits b on the wire, 8/16/32/64 (default 32)"),
)

FAIL_ENV = "MPIOPT_FAIL_AT"
"""Fault-injection hook for tests: ``RANK:ITER[:MODE]`` makes that rank, after that iteration, raise
an exception (MODE ``raise``, the default), die by SIGKILL (``kill``), or poison its iterate with NaN
so its next gradient is non-finite (``nan``)."""


def register(sub) -> None:
    p = sub.add_parser("run", help="run a method on preprocessed shards (under mpiexec)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR", help="folder written by 'mpiopt preprocess'")
    p.add_argument("--method", required=True, metavar="NAME", help="one of: " + ", ".join(sorted(METHODS)))
    p.add_argument("--iters", type=int, default=1000, metavar="K", help="maximum iterations (default 1000)")
    p.add_argument("--tol", type=float, metavar="T",
                   help="stop once ||x-x*||^2 <= T (x* from meta.json), else once ||grad f||^2 <= T")
    p.add_argument("--batch", type=int, metavar="B", help="minibatch size per rank (stochastic methods)")
    p.add_argument("--lr", type=float, metavar="ETA", help="step size (default: the method's theory value)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--out", required=True, metavar="TRACE.json", help="where rank 0 writes the trace")
    p.add_argument("--log-every", type=int, metavar="K", help="evaluate f and ||grad f|| every K iterations")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on rank 0")
    p.add_argument("--label", metavar="TEXT",
                   help="this run's name in 'mpiopt plot' legends (default: the method and the options that tell "
                        "it apart)")
    p.add_argument("--checkpoint-every", type=int, metavar="K", help="save every rank's state every K iterations")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="where checkpoints go (default: TRACE.json.ckpt)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint, if any")
    group = p.add_argument_group("method options (only for the methods that take them)")
    for flag, kind, choices, text in METHOD_OPTIONS:
        group.add_argument(flag, type=kind, choices=choices, help=text)
    p.set_defaults(handler=handle)


def method_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The method options the user gave (others keep the method's defaults)."""
    chosen = {}
    for flag, *_ in METHOD_OPTIONS:
        key = flag[2:].replace("-", "_")
        if getattr(args, key) is not None:
            chosen[key] = getattr(args, key)
    return chosen


def load_problem(data_dir: str, comm: Communicator):
    """This rank's LogisticProblem and meta.json; any rank's failure is raised on all ranks."""
    from mpiopt.data import load_shard

    problem, meta, error = None, None, None
    try:
        A, b, meta = load_shard(data_dir, comm.rank, comm.size)
        problem = LogisticProblem(A, b, meta["l2"], smoothness=meta["L_workers"][comm.rank])
    except InputError as exc:
        error = exc
    agree_or_raise(comm, error)
    return problem, meta


def failure_injection(comm: Communicator):
    """The callback behind ``MPIOPT_FAIL_AT``, or None when the variable is unset."""
    spec = os.environ.get(FAIL_ENV)
    if not spec:
        return None
    rank, iteration, *mode = spec.split(":")
    rank, iteration, mode = int(rank), int(iteration), (mode or ["raise"])[0]

    def fail(k: int, x: np.ndarray) -> bool:
        if comm.rank != rank or k != iteration:
            return False
        if mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "nan":
            x[0] = np.nan
            return False
        raise RuntimeError(f"injected failure at iteration {k} ({FAIL_ENV}={spec})")

    return fail


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any data is loaded, a --out that is a directory, and any output (--out, the
    checkpoints) inside the --data folder: a run must never replace meta.json or a shard."""
    data = Path(args.data).resolve()
    if Path(args.out).is_dir():
        raise InputError(f"--out {quoted(args.out)} is a directory; give the trace's file name, e.g. "
                         f"--out {quoted(str(Path(args.out) / 'run.json'))}", collective=True)
    for flag, path in (("--out", args.out), ("--checkpoint-dir", args.checkpoint_dir)):
        if path is not None and (Path(path).resolve() == data or data in Path(path).resolve().parents):
            raise InputError(f"{flag} {quoted(path)} is inside the data folder {quoted(args.data)}, which a run "
                             f"never writes to; choose a path outside it (e.g. under results/)", collective=True)


def handle(args: argparse.Namespace) -> int:
    comm = Communicator()
    check_outputs(args)
    with abort_on_error(comm):
        out = Path(args.out)
        problem, meta = load_problem(args.data, comm)
        checkpoint_dir = args.checkpoint_dir or (str(out) + ".ckpt" if args.checkpoint_every else None)
        header = {"problem": "logistic", "dataset": meta["dataset"], "data_dir": str(args.data),
                  "meta": {k: meta[k] for k in ("n_samples", "n_features", "l2", "L", "f_star") if k in meta}}
        if args.label:
            header["label"] = args.label
        try:
            res = minimize(problem, args.method, comm, iters=args.iters, tol=args.tol, lr=args.lr,
                           batch=args.batch, seed=args.seed, x_star=meta.get("x_star"), f_star=meta.get("f_star"),
                           L=meta["L"], L_max=max(meta["L_workers"]), log_every=args.log_every,
                           progress=not args.no_progress, checkpoint_dir=checkpoint_dir,
                           checkpoint_every=args.checkpoint_every, resume=args.resume, header=header,
                           callback=failure_injection(comm), **method_options(args))
        except RunError as exc:
            if comm.rank == 0 and exc.collective:
                write_json(out, {**header, "method": args.method, "status": f"error: {exc}"})
            raise
        if comm.rank == 0:
            write_json(out, res.trace)
            print_summary(res.trace, out)
    return 0


def print_summary(trace: Dict[str, Any], out: Path) -> None:
    """A short table on stdout: what a user checks first after a run."""
    h = trace["history"]
    gap, dist = h["f_gap"][-1], h["dist_sq"][-1]
    cols = [("method", trace["method"]), ("ranks", str(trace["n_ranks"])), ("iterations", str(trace["iterations"])),
            ("f - f*", _fmt(gap)), ("||x - x*||^2", _fmt(dist)), ("wire bytes/rank", str(h["wire_bytes"][-1])),
            ("seconds", f"{trace['seconds_total']:.3f}"), ("status", trace["status"])]
    width = [max(len(a), len(b)) for a, b in cols]
    print("  ".join(a.ljust(w) for (a, _), w in zip(cols, width)))
    print("  ".join(b.ljust(w) for (_, b), w in zip(cols, width)))
    print(f"trace written to {out}")
    sys.stdout.flush()


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3e}"
