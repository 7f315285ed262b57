"""What the launchers' oversubscription yield costs when the ranks fit the cores (issue 26, item 2).

VR-IntDIANA on a5a (batch 160 per rank) on ``--ranks`` ranks, launched alternately with mpiopt's
launch settings for that rank count (``launch.mpi_env``: no yield while ranks <= cores) and with the
library's yield forced on (what the launchers set whatever the rank count before): milliseconds per
iteration (the run's ``seconds_total`` / ``iterations``), the load average before each run, medians
and their ratio, in one JSON under benchmarks/results/.

    python benchmarks/launch_yield.py [--ranks 2] [--pairs 5] [--iters 3000] [--json benchmarks/results/launch_yield.json]
"""

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import mpiopt_run, write_json  # noqa: E402
from mpiopt import launch  # noqa: E402
from mpiopt.data import load_libsvm, preprocess  # noqa: E402


def ms_per_iteration(shards: Path, ranks: int, iters: int, batch: int, env, out: Path) -> float:
    """One ``mpiopt run`` of VR-IntDIANA; its step-loop seconds per iteration, in ms."""
    trace = mpiopt_run(ranks, ["--data", shards, "--method", "vr-intdiana", "--iters", iters, "--tol", "1e-300",
                               "--batch", batch, "--log-every", iters], out=out, extra_env=env, timeout=900)
    return 1e3 * trace["seconds_total"] / trace["iterations"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=5, help="alternating (launcher, forced yield) pairs")
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=160)
    ap.add_argument("--libsvm", type=Path, default=REPO.parent / "shared" / "data" / "libsvm" / "a5a")
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results" / "launch_yield.json")
    args = ap.parse_args(argv)
    library = launch.mpi_library()
    root = os.geteuid() == 0
    forced = launch.library_settings(library, args.ranks, n_cores=args.ranks - 1, root=root)
    variants = {"launcher": {}, "forced_yield": forced}  # over mpiopt's launch settings for the ranks
    runs = {name: [] for name in variants}
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
    medians = {name: statistics.median(r["ms_per_iteration"] for r in rs) for name, rs in runs.items()}
    ratio = medians["forced_yield"] / medians["launcher"]
    print(f"median ms/iteration: launcher {medians['launcher']:.3f}, forced yield {medians['forced_yield']:.3f}; "
          f"forced yield / launcher = {ratio:.2f}")
    record = {"library": library, "ranks": args.ranks, "cores": launch.cores(), "iters": args.iters,
              "batch": args.batch, "launcher_settings": launch.library_settings(library, args.ranks, launch.cores(),
                                                                                root),
              "forced_settings": forced, "runs": runs, "median_ms_per_iteration": medians,
              "forced_over_launcher": ratio,
              "note": "alternating runs on a machine shared with other jobs (see loadavg_before)"}
    write_json(args.json, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
