"""``mpiopt run``: each rank loads its shard, runs a method, rank 0 writes the trace JSON.

Launched as ``mpiexec -n N mpiopt run --data DIR --method NAME --out TRACE.json``; N must equal the
number of workers the data was preprocessed for.
"""

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from mpiopt.comm import MPICommunicator
from mpiopt.commands import plain
from mpiopt.compressors import REGISTRY, Option, all_options
from mpiopt.errors import InputError, RunError, quoted
from mpiopt.failfast import abort_on_error
from mpiopt.methods import METHODS
from mpiopt.methods.composed import own_options
from mpiopt.methods.memory import MEMORIES
from mpiopt.naming import command_line
from mpiopt.problems.shards import load_problem
from mpiopt.run import minimize
from mpiopt.trace import write_json


def register(sub) -> None:
    p = sub.add_parser("run", help="run a method on preprocessed shards (under mpiexec)",
                       description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, metavar="DIR", help="folder written by 'mpiopt preprocess'")
    p.add_argument("--method", required=True, metavar="NAME", help="one of: " + ", ".join(sorted(METHODS)))
    p.add_argument("--iters", type=int, default=1000, metavar="K", help="maximum iterations (default 1000)")
    p.add_argument("--tol", type=float, metavar="T",
                   help="stop once ||x-x*||^2 <= T (x* from meta.json), else once ||grad f||^2 <= T")
    p.add_argument("--batch", type=int, metavar="B",
                   help="minibatch size per rank (stochastic methods; default 1%% of the shard, at least 1; "
                        "gd takes none)")
    p.add_argument("--lr", type=float, metavar="ETA",
                   help="step size (default: the theory value: 1/L for gd, 1/(2 L_max (1 + 2 omega/n)) for sgd-type "
                        "methods, the L-SVRG formula for l-svrg and vr-*; the run table prints it)")
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
    p.add_argument("--plugin", action="append", metavar="MODULE_OR_FILE",
                   help="import a module (a name, or the path to a .py file) that registers compressors, before "
                        "the options below are built; repeatable. Installed packages' 'mpiopt.plugins' entry "
                        "points load by themselves")
    group = p.add_argument_group("method options (generated from the registered compressors and memories; "
                                 "only for the methods that take them)")
    for option in cli_options():
        group.add_argument(option.flag, type=option.kind, choices=option.choices, metavar=_metavar(option),
                           help=_help(option))
    p.set_defaults(handler=handle)


def cli_options() -> List[Option]:
    """Every option a method, memory or registered compressor declares, once each by name."""
    found: Dict[str, Option] = {}
    for recipe, _ in METHODS.values():
        for option in own_options(recipe):
            found.setdefault(option.name, option)
    for memory in MEMORIES.values():
        for option in memory.options:
            found.setdefault(option.name, option)
    for option in all_options().values():
        found.setdefault(option.name, option)
    return [o for o in found.values() if o.cli]


def _users(option: Option) -> str:
    """Which compressors declare an option (for its help line)."""
    names = [name for name, cls in REGISTRY.items() if any(o.name == option.name for o in cls.options)]
    return f" [{', '.join(names)}]" if names else ""


def _help(option: Option) -> str:
    default = "" if option.default is None else f" (default {option.default})"
    return option.help + default + _users(option)


def _metavar(option: Option) -> Optional[str]:
    if option.choices is not None:
        return "{" + ",".join(map(str, option.choices)) + "}"
    return option.name.upper()


def method_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The method options the user gave (others keep the method's defaults)."""
    return {o.name: getattr(args, o.name) for o in cli_options() if getattr(args, o.name) is not None}


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


def handle(args: argparse.Namespace, callback: Optional[Callable[[int, np.ndarray], Any]] = None) -> int:
    """Run the job; ``callback(k, x)`` is minimize's callback (the test suite injects faults with it).
    Messages name the command line's flags (``--lr``), not Python's keywords."""
    with command_line():
        return _run(args, callback)


def _run(args: argparse.Namespace, callback: Optional[Callable[[int, np.ndarray], Any]]) -> int:
    comm = MPICommunicator()
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
                           callback=callback, **method_options(args))
        except RunError as exc:
            if comm.rank == 0 and exc.collective:
                write_json(out, {**header, "method": args.method, "status": f"error: {exc}"})
            raise
        if comm.rank == 0:
            write_json(out, res.trace)
            print_summary(res.trace, out)
        if res.status == "diverged":
            raise RunError(res.message, collective=True)
    return 0


def print_summary(trace: Dict[str, Any], out: Path) -> None:
    """A short table on stdout: what a user checks first after a run."""
    h = trace["history"]
    gap, dist = h["f_gap"][-1], h["dist_sq"][-1]
    cols = [("method", trace["method"]), ("ranks", str(trace["n_ranks"])), ("iterations", str(trace["iterations"])),
            ("step size", f"{trace['config']['lr']:.4g}"), ("batch", str(trace["config"].get("batch") or "full")),
            ("f - f*", _fmt(gap)), ("||x - x*||^2", _fmt(dist)), ("wire bytes/rank", str(h["wire_bytes"][-1])),
            ("step seconds", f"{trace['seconds_total']:.3f}"),
            ("compile seconds", f"{trace.get('compile_seconds', 0.0):.3f}"), ("status", trace["status"])]
    width = [max(len(a), len(b)) for a, b in cols]
    print("  ".join(a.ljust(w) for (a, _), w in zip(cols, width)))
    print("  ".join(b.ljust(w) for (_, b), w in zip(cols, width)))
    print(f"trace written to {out}")
    sys.stdout.flush()


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3e}"
