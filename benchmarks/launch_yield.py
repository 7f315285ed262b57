"""What the launchers' yield choice costs or saves: the library's yield on against off, per rank count.

VR-IntDIANA on a5a (batch ``--batch`` per rank) on ``--ranks`` ranks, launched alternately with mpiopt's
launch settings for that rank count (``launch.mpi_env``: the library's yield only when ranks outnumber
the cores) and with the other choice: the yield forced on where the ranks fit the cores (issue 26,
item 2), forced off where they do not (``YIELD_OFF``). Milliseconds per iteration (the run's
``seconds_total`` / ``iterations``), the load average before each run, medians and their ratio, in one
JSON under benchmarks/results/. ``--busy N`` runs N busy loops beside the ranks for the whole
measurement: a machine loaded by other jobs.

    python benchmarks/launch_yield.py [--ranks 2] [--pairs 5] [--iters 3000] [--busy 0] [--json benchmarks/results/launch_yield.json]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import mpiopt_run, write_json  # noqa: E402
from mpiopt import launch  # noqa: E402
from mpiopt.data import load_libsvm, preprocess  # noqa: E402


YIELD_OFF = {"mpich": {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "0"}, "openmpi": {"OMPI_MCA_mpi_yield_when_idle": "0"},
             "impi": {"I_MPI_THREAD_YIELD": "0"}}
"""Each library's yield turned off (over the oversubscription settings the launchers keep)."""


def ms_per_iteration(shards: Path, ranks: int, iters: int, batch: int, env, out: Path) -> float:
    """One ``mpiopt run`` of VR-IntDIANA; its step-loop seconds per iteration, in ms."""
    trace = mpiopt_run(ranks, ["--data", shards, "--method", "vr-intdiana", "--iters", iters, "--tol", "1e-300",
                               "--batch", batch, "--log-every", iters], out=out, extra_env=env, timeout=900)
    return 1e3 * trace["seconds_total"] / trace["iterations"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=5, help="alternating (launcher, other choice) pairs")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=160)
    ap.add_argument("--busy", type=int, default=0, help="busy loops run beside the ranks (other jobs' load)")
    ap.add_argument("--libsvm", type=Path, default=REPO.parent / "shared" / "data" / "libsvm" / "a5a")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "launch_yield.json")
    args = ap.parse_args(argv)
    library = launch.mpi_library()
    root = os.geteuid() == 0
    if args.ranks > launch.cores():
        other, prefix, forced = "no_yield", "no_yield", YIELD_OFF[library]
    else:
        other, prefix = "forced_yield", "forced"
        forced = launch.library_settings(library, args.ranks, n_cores=args.ranks - 1, root=root)
    variants = {"launcher": {}, other: forced}  # over mpiopt's launch settings for the ranks
    runs = {name: [] for name in variants}
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        measure(args, variants, runs)
    finally:
        for loop in busy:
            loop.kill()
            loop.wait()
    medians = {name: statistics.median(r["ms_per_iteration"] for r in rs) for name, rs in runs.items()}
    ratio = medians[other] / medians["launcher"]
    print(f"median ms/iteration: launcher {medians['launcher']:.3f}, {other} {medians[other]:.3f}; "
          f"{other} / launcher = {ratio:.2f}")
    record = {"library": library, "ranks": args.ranks, "cores": launch.cores(), "iters": args.iters,
              "batch": args.batch, "busy_loops": args.busy,
              "mpi4py_thread_level": os.environ.get("MPI4PY_RC_THREAD_LEVEL", "multiple (mpi4py's default)"),
              "launcher_settings": launch.library_settings(library, args.ranks, launch.cores(), root),
              f"{prefix}_settings": forced, "runs": runs, "median_ms_per_iteration": medians,
              f"{prefix}_over_launcher": ratio,
              "note": "alternating runs (see loadavg_before; busy_loops: CPU-bound loops run beside them)"}
    write_json(args.json, record)
    return 0


def measure(args, variants, runs) -> None:
    """Alternating runs of each variant, ``args.pairs`` times, appended to ``runs``."""
    with tempfile.TemporaryDirectory(prefix="launch_yield-") as tmp:
        X, y = load_libsvm(args.libsvm, n_features=123)
        shards = Path(tmp) / "shards"
        preprocess(X, y, args.ranks, 5e-4, shards, dataset="a5a", source_sha256=None)
        for pair in range(args.pairs):
            for name, env in variants.items():
                load = os.getloadavg()
                ms = ms_per_iteration(shards, args.ranks, args.iters, args.batch, env, Path(tmp) / f"{name}.json")
                runs[name].append({"ms_per_iteration": ms, "loadavg_before": list(load)})
                print(f"pair {pair} {name:13s} {ms:.3f} ms/iteration (load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})",
                      flush=True)


if __name__ == "__main__":
    sys.exit(main())
