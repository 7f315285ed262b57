"""Where one iteration of a convex method spends its time, part by part, on the d = 1e6 problem.

    python benchmarks/iteration_profile.py [--ranks 4] [--iters 60] [--json benchmarks/results/iteration_profile.json]

Runs float32 L-SVRG, VR-IntDIANA and VR-DIANA with nat, one after the other, on the generated
``sparse-1e6`` shards of ``time_to_accuracy.py`` (made once under ``data/``) with ``mpiexec -n R``,
and times inside every rank: the problem's gradients (``stochastic_grad`` twice a step, ``grad`` at a
reference reset), each collective, each compressor kernel call, and the whole step; "vector passes"
is the step's time outside those parts (the numpy passes of the estimator, the shift and the
update). Times are ms per iteration, the mean over the ranks, measured side by side in one run; the
ratio column is each method's step over float32 L-SVRG's. The kernels are compiled before the
timed iterations (one untimed warm-up run of each method).

JSON: ``{"ranks", "dim", "iters", "machine", "methods": [{"method", "parts": {name: ms}, "step_ms",
"vs_lsvrg_float32"}]}``.
"""

import argparse
import functools
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

METHODS = (
    ("l-svrg float32", "l-svrg", {"float_dtype": "float32"}),
    ("vr-intdiana", "vr-intdiana", {}),
    ("vr-diana nat", "vr-diana", {"compressor": "nat"}),
)
BATCH = 625
"""The minibatch per rank of time_to_accuracy.py's sparse-1e6 runs."""


IN_STEP = [False]
"""Whether a step is running: the parts count only inside one (not the trace's evaluations)."""


def _timed(table: Dict[str, float], name: str, fn, step: bool = False):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not (step or IN_STEP[0]):
            return fn(*args, **kwargs)
        IN_STEP[0] = True
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            table[name] += time.perf_counter() - t0
            IN_STEP[0] = IN_STEP[0] and not step
    return wrapper


def instrument(table: Dict[str, float]) -> None:
    """Wrap the parts to time (class attributes, so every object built afterwards is timed)."""
    from mpiopt.comm import MPICommunicator
    from mpiopt.compressors.nat import NatCompressor
    from mpiopt.kernels import numba as nb_kernels
    from mpiopt.methods.composed import CompressedMethod
    from mpiopt.problems.logistic import LogisticProblem

    for cls, names, prefix in (
        (LogisticProblem, ("stochastic_grad", "grad"), "gradient: "),
        (MPICommunicator, ("allreduce_int", "allreduce_float", "allreduce_max", "allgather", "alltoall"), "MPI: "),
        (nb_kernels.Quantizer, ("round", "pack", "decode", "decode_local", "decode_update", "block_max_abs",
                             "shift_delta", "shift_update"), "int kernel: "),
        (NatCompressor, ("encode", "decode_mean"), "nat: "),
    ):
        for name in names:
            if hasattr(cls, name):
                setattr(cls, name, _timed(table, prefix + name, getattr(cls, name)))
    start = CompressedMethod.start

    def timed_start(self, x):
        start(self, x)
        self.step = _timed(table, "step", self.step, step=True)
    CompressedMethod.start = timed_start


def worker(args) -> int:
    from mpiopt.comm import MPICommunicator
    from mpiopt.problems.shards import load_problem
    from mpiopt.run import minimize

    table: Dict[str, float] = defaultdict(float)
    instrument(table)
    comm = MPICommunicator()
    problem, meta = load_problem(str(args.data), comm)
    rows = []
    for label, method, options in METHODS:
        common = dict(batch=BATCH, seed=0, L=meta["L"], L_max=max(meta["L_workers"]), **options)
        minimize(problem, method, comm, iters=3, **common)  # compile and warm up
        table.clear()
        minimize(problem, method, comm, iters=args.iters, **common)
        mine = {k: v / args.iters * 1e3 for k, v in table.items()}
        everyone = comm.allgather_object(mine)
        parts = {k: sum(r.get(k, 0.0) for r in everyone) / len(everyone) for k in sorted(mine)}
        step = parts.pop("step")
        parts["vector passes (rest of the step)"] = step - sum(parts.values())
        rows.append({"method": label, "parts": parts, "step_ms": step})
    if comm.rank == 0:
        base = rows[0]["step_ms"]
        for r in rows:
            r["vs_lsvrg_float32"] = r["step_ms"] / base
        from harness import machine_info, write_json
        write_json(args.out, {"ranks": comm.size, "dim": problem.dim, "iters": args.iters, "batch": BATCH,
                              "machine": machine_info(), "methods": rows})
    return 0


def table(result: Dict) -> str:
    """Markdown: one column per method, one row per part (ms per iteration)."""
    methods = result["methods"]
    names: List[str] = []
    for m in methods:
        names += [k for k in m["parts"] if k not in names]
    lines = ["| part (ms / iteration) | " + " | ".join(m["method"] for m in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for k in names:
        cells = (f"{m['parts'][k]:.2f}" if k in m["parts"] else "-" for m in methods)
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("| **step** | " + " | ".join(f"**{m['step_ms']:.2f}**" for m in methods) + " |")
    lines.append("| step / float32 L-SVRG | " + " | ".join(f"{m['vs_lsvrg_float32']:.2f}x" for m in methods) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--iters", type=int, default=60)
    p.add_argument("--sparse-rows", type=int, default=50_000)
    p.add_argument("--shards-dir", type=Path, default=REPO / "data")
    p.add_argument("--json", type=Path, help="where to write the result")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args)
    import tempfile

    from harness import SINGLE_THREAD_ENV, run_mpi, write_json
    from time_to_accuracy import sparse_shards

    os.environ.update(SINGLE_THREAD_ENV)
    data = sparse_shards(args.ranks, args.sparse_rows, args.shards_dir)
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp:
        out = Path(tmp) / "profile.json"
        run_mpi(args.ranks, [sys.executable, __file__, "--worker", "--data", data, "--iters", args.iters, "--out", out],
                extra_env=SINGLE_THREAD_ENV, timeout=1800)
        result = json.loads(out.read_text())
    result["machine"]["loadavg_start"] = result["machine"].pop("loadavg", None)
    print(table(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
