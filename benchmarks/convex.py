"""The IntSGD paper's convex experiment: l2-logistic regression over 12 ranks, heterogeneous shards.

For each dataset (a5a, mushrooms, w8a by default) this preprocesses the LIBSVM file from a local
folder into ``data/<dataset>-<R>`` (git-ignored), runs every method for several seeds with
``mpiexec -n R mpiopt run --tol 1e-8 --label <method label>``, writes each trace under
``benchmarks/results/convex/<dataset>/``, one figure per dataset (PNG and PDF) and a markdown and
JSON summary beside the traces: iterations and bytes per rank to reach the tolerance (or the best
reached), final error, seconds.

    python benchmarks/convex.py [--datasets a5a mushrooms w8a] [--ranks 12] [--seeds 3] [--iters 6000]
    python benchmarks/convex.py --datasets w8a --no-run     # summaries and figures from the traces there
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import mpiopt_run  # noqa: E402
from mpiopt.data import load_libsvm, preprocess  # noqa: E402
from mpiopt.datasets import REGISTRY  # noqa: E402
from mpiopt.plot import plot_traces  # noqa: E402

METHODS = (
    # label, method name, extra options
    ("vr-intdiana", "vr-intdiana", []),
    ("intdiana", "intdiana", []),
    ("intsgd", "intsgd", []),
    ("l-svrg", "l-svrg", []),
    ("vr-hintdiana", "vr-diana", ["--compressor", "hint"]),
    ("vr-natdiana", "vr-diana", ["--compressor", "nat"]),
    ("diana", "diana", []),
    ("sgd", "sgd", []),
    ("hintsgd", "hintsgd", []),
    ("natsgd", "natsgd", []),
    ("qsgd", "qsgd", []),
    ("ef-signsgd", "ef-signsgd", []),
    ("dgc", "dgc", []),
)


def shards_for(dataset: str, ranks: int, data_dir: Path, out: Path) -> Path:
    """Preprocess ``dataset`` for ``ranks`` workers once (meta.json marks a finished folder)."""
    target = out / f"{dataset}-{ranks}"
    if (target / "meta.json").exists():
        return target
    info = REGISTRY[dataset]
    X, y = load_libsvm(data_dir / info.filename, info.n_features)
    meta = preprocess(X, y, ranks, info.l2, target, dataset=dataset, source_sha256=info.sha256)
    print(f"{dataset}: {meta['n_samples']} rows x {meta['n_features']} for {ranks} workers, "
          f"f* = {meta['f_star']:.12f}, ||grad f(x*)|| = {meta['grad_norm_at_x_star']:.1e}", flush=True)
    return target


def default_batch(shards: Path) -> int:
    """About 5% of a worker's rows, the minibatch of the acceptance setup (26 of 534 rows on a5a/12)."""
    meta = json.loads((shards / "meta.json").read_text())
    return max(1, meta["n_samples"] // meta["n_workers"] // 20)


def run_one(shards: Path, ranks: int, label: str, method: str, extra, seed: int, batch: int, args,
            trace: Path) -> dict:
    return mpiopt_run(ranks, ["--data", shards, "--method", method, *extra, "--iters", args.iters, "--tol", args.tol,
                              "--batch", batch, "--seed", seed, "--log-every", args.log_every, "--label", label],
                      out=trace)


def stored(trace: Path) -> dict:
    """A trace an earlier run wrote (``--no-run``)."""
    if not trace.exists():
        raise SystemExit(f"benchmarks/convex.py --no-run: {trace} is missing; run without --no-run first")
    return json.loads(trace.read_text())


def reached(record: dict, tol: float):
    """(iteration, bytes per rank) at the first logged row with ||x - x*||^2 <= tol, else None."""
    h = record["history"]
    for it, dist, nbytes in zip(h["iteration"], h["dist_sq"], h["wire_bytes"]):
        if dist is not None and dist <= tol:
            return it, nbytes
    return None


def summarize(label: str, records, tol: float) -> dict:
    hits = [reached(r, tol) for r in records]
    finals = [r["history"]["dist_sq"][-1] for r in records]
    ok = [h for h in hits if h is not None]
    return {
        "method": label,
        "seeds": len(records),
        "reached": f"{len(ok)}/{len(records)}",
        "iterations": statistics.median(h[0] for h in ok) if ok else None,
        "bytes_per_rank": statistics.median(h[1] for h in ok) if ok else None,
        "final_dist_sq": statistics.median(finals),
        "best_dist_sq": min(finals),
        "seconds": statistics.median(r["seconds_total"] for r in records),
        "bytes_per_iteration": statistics.median(r["history"]["wire_bytes"][-1] / max(1, r["iterations"])
                                                 for r in records),
    }


def markdown(dataset: str, rows, tol: float, ranks: int, batch: int, seeds: int) -> str:
    lines = [f"### {dataset}: {ranks} ranks, batch {batch}/rank, {seeds} seed(s), tolerance ||x - x*||^2 <= {tol:g}",
             "", "Medians over seeds; `reached` counts the seeds that got to the tolerance within the iteration cap.", "",
             "| method | reached | iterations | bytes/rank to tol | bytes/iter | final ||x-x*||^2 | seconds |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        it = "-" if r["iterations"] is None else f"{r['iterations']:.0f}"
        nb = "-" if r["bytes_per_rank"] is None else f"{r['bytes_per_rank']:,.0f}"
        lines.append(f"| {r['method']} | {r['reached']} | {it} | {nb} | {r['bytes_per_iteration']:,.0f} | "
                     f"{r['final_dist_sq']:.2e} | {r['seconds']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["a5a", "mushrooms", "w8a"])
    p.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data" / "libsvm",
                   help="folder holding the LIBSVM files (default ../shared/data/libsvm)")
    p.add_argument("--ranks", type=int, default=12)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--iters", type=int, default=6000)
    p.add_argument("--tol", type=float, default=1e-8)
    p.add_argument("--batch", type=int, help="minibatch per rank (default: 5%% of a shard, 26 rows on a5a/12)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--methods", nargs="+", help="labels to run (default: all)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "convex")
    p.add_argument("--shards-dir", type=Path, default=REPO / "data",
                   help="where the preprocessed shards are kept (default data/, git-ignored)")
    p.add_argument("--no-run", action="store_true",
                   help="run nothing: rebuild the summaries and figures from the traces under --out")
    args = p.parse_args(argv)
    if not args.no_run and not args.data_dir.is_dir():
        print(f"benchmarks/convex.py: no LIBSVM folder at {args.data_dir}; pass --data-dir", file=sys.stderr)
        return 2
    chosen = [m for m in METHODS if not args.methods or m[0] in args.methods]
    for dataset in args.datasets:
        folder = args.out / dataset
        folder.mkdir(parents=True, exist_ok=True)
        if args.no_run:
            first = stored(folder / f"{chosen[0][0]}-seed0.json")
            batch, args.iters = first["config"]["batch"], first["config"]["iters"]
        else:
            shards = shards_for(dataset, args.ranks, args.data_dir, args.shards_dir)
            batch = args.batch or default_batch(shards)
        rows, traces, labels = [], [], {}
        for label, method, extra in chosen:
            records = []
            for seed in range(args.seeds):
                trace = folder / f"{label}-seed{seed}.json"
                records.append(stored(trace) if args.no_run else
                               run_one(shards, args.ranks, label, method, extra, seed, batch, args, trace))
                traces.append(str(trace))
                labels[str(trace)] = label
            rows.append(summarize(label, records, args.tol))
            r = rows[-1]
            print(f"{dataset:10s} {label:13s} reached {r['reached']} iters={r['iterations']} "
                  f"final={r['final_dist_sq']:.2e} bytes/iter={r['bytes_per_iteration']:.0f}", flush=True)
        report = markdown(dataset, rows, args.tol, args.ranks, batch, args.seeds)
        (folder / "summary.md").write_text(report)
        (folder / "summary.json").write_text(json.dumps(
            {"dataset": dataset, "ranks": args.ranks, "seeds": args.seeds, "tol": args.tol, "iters": args.iters,
             "batch": batch, "methods": rows}, indent=1))
        for suffix in ("png", "pdf"):
            plot_traces(traces, str(args.out / f"{dataset}.{suffix}"), labels=labels,
                        title=f"{dataset}: l2-logistic regression, {args.ranks} ranks, batch {batch}/rank")
        print(report, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
