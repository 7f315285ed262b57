"""Time-to-accuracy of the convex methods on one network: seconds and bytes until ||x - x*||^2 <= 1e-6 ||x*||^2.

    python benchmarks/time_to_accuracy.py --net 1gbit --ranks 4 --json benchmarks/results/time_to_accuracy_1gbit.json
    python benchmarks/time_to_accuracy.py --plot benchmarks/results/time_to_accuracy_*.json   # figures

For each dataset (``a5a`` from ``--libsvm-dir``; ``sparse-1e6``, written by ``sparse_problem.py``:
d = 1e6, power-law feature frequencies) it preprocesses the shards once into ``--shards-dir``
(git-ignored ``data/``), then runs every method with ``mpiopt run --tol 1e-6 ||x*||^2``: on ``shm``
as a plain ``mpiexec -n R`` on this machine, on ``1gbit`` / ``10gbit`` across the namespace test
bed of ``netbed.py`` (one emulated host per rank, built once for all the runs of that network; root
needed). Methods: L-SVRG with a float64 and a float32 wire, VR-IntDIANA (``auto`` integers; its default,
``--alpha exponent`` with ``--feedback on``, and the default before the feedback, ``--alpha fill
--feedback off``: the same scaling with an int16 floor), VR-DIANA with the nat and with the qsgd
compressor. Every rank computes on one thread.

Time is the traces' ``seconds`` column (the optimizer's step time, summed; the kernels' compile
time is reported apart, the evaluations of f and ||x - x*|| for the trace are not counted), bytes
are ``wire_bytes`` (sent per rank, cumulative); both are read at the first logged row that meets the
tolerance, so ``--log-every`` bounds how late the crossing is seen. Output::

    {"results": [{"dataset", "method", "wire", "net", "ranks", "reached", "seconds_to_tol",
                  "bytes_to_tol", "iterations_to_tol"}, ...],
     "machine": {..., "loadavg": [...] at the start}, "netbed": {...} (network runs),
     "runs": [{"dataset", "method", "wire", "loadavg_start", "status", "compile_seconds",
               "iterations", "history": {"iteration", "seconds", "wire_bytes", "rel_err"}}, ...]}

``runs`` keeps each run's curve (relative error ||x - x*||^2 / ||x*||^2) for the figures.
"""

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))

import netbed  # noqa: E402
from harness import SINGLE_THREAD_ENV, machine_info, run_mpi, write_json  # noqa: E402

NETS = ("shm", "10gbit", "1gbit")
REL_TOL = 1e-6
METHODS = (
    # label, wire, mpiopt run options
    ("l-svrg", "float64", ["--method", "l-svrg", "--float-dtype", "float64"]),
    ("l-svrg", "float32", ["--method", "l-svrg", "--float-dtype", "float32"]),
    ("vr-intdiana", "auto", ["--method", "vr-intdiana", "--wire-dtype", "auto"]),
    ("vr-intdiana-fill", "auto", ["--method", "vr-intdiana", "--wire-dtype", "auto", "--alpha", "fill",
                                  "--feedback", "off"]),
    ("vr-diana-nat", "auto", ["--method", "vr-diana", "--compressor", "nat"]),
    ("vr-diana-qsgd", "auto", ["--method", "vr-diana", "--compressor", "qsgd"]),
)
"""``wire``: the float dtype of the float methods; ``auto`` where the compressor picks its own format."""
DATASETS = {
    # name: iteration cap, log every, l2, minibatch per rank
    "a5a": {"iters": 20000, "log_every": 20, "l2": 5e-4, "batch": 80},
    "sparse-1e6": {"iters": 500, "log_every": 10, "l2": 1e-4, "batch": 625},
}


# ----------------------------------------------------------------------------------------------
# data

def a5a_shards(ranks: int, libsvm_dir: Path, shards_dir: Path) -> Path:
    """a5a preprocessed for ``ranks`` workers (once; meta.json marks a finished folder)."""
    from mpiopt.data import load_libsvm, preprocess
    from mpiopt.datasets import REGISTRY

    target = shards_dir / f"a5a-{ranks}"
    if not (target / "meta.json").exists():
        info = REGISTRY["a5a"]
        X, y = load_libsvm(libsvm_dir / info.filename, info.n_features)
        preprocess(X, y, ranks, DATASETS["a5a"]["l2"], target, dataset="a5a", source_sha256=info.sha256)
    return target


def sparse_shards(ranks: int, rows: int, shards_dir: Path) -> Path:
    """The generated d = 1e6 problem (``rows`` rows, seed 0) preprocessed for ``ranks`` workers (once)."""
    import sparse_problem
    from mpiopt.data import preprocess

    target = shards_dir / f"sparse-1e6-{rows}-{ranks}"
    if not (target / "meta.json").exists():
        X, y = sparse_problem.generate(rows=rows)
        preprocess(X, y, ranks, DATASETS["sparse-1e6"]["l2"], target, dataset="sparse-1e6", source_sha256=None)
    return target


# ----------------------------------------------------------------------------------------------
# runs

def run_argv(data: Path, options: Sequence[str], cfg: Dict[str, float], tol: float, out: Path) -> List[str]:
    """``mpiopt run ...`` for one method on one dataset, stopping at the tolerance."""
    return ["mpiopt", "run", "--data", str(data), *options, "--iters", str(cfg["iters"]), "--tol", repr(tol),
            "--batch", str(cfg["batch"]), "--log-every", str(cfg["log_every"]), "--seed", "0", "--no-progress",
            "--out", str(out)]


class Launcher:
    """Runs ``mpiopt run`` jobs on one network: plain mpiexec (shm) or across the test bed."""

    def __init__(self, net: str, ranks: int, bed=None, timeout: float = 900):
        self.net, self.ranks, self.bed, self.timeout = net, ranks, bed, timeout

    def __call__(self, argv: List[str]) -> None:
        if self.bed is None:
            run_mpi(self.ranks, netbed.job_argv(argv), timeout=self.timeout)
        elif netbed.run_job(self.bed, argv, timeout=self.timeout)["returncode"] != 0:
            raise RuntimeError(f"{' '.join(argv)} failed on {self.net}")


def crossing(history: Dict[str, list], tol: float) -> Optional[int]:
    """Index of the first logged row with ||x - x*||^2 <= tol, else None."""
    for i, dist in enumerate(history["dist_sq"]):
        if dist is not None and dist <= tol:
            return i
    return None


def summarize(trace: Dict, dataset: str, label: str, wire: str, net: str, ranks: int, tol: float,
              x_star_sq: float, loadavg: List[float]) -> Dict[str, Dict]:
    """The result row (the contracted keys only) and the run's curve for the figures."""
    h = trace["history"]
    i = crossing(h, tol)
    row = {"dataset": dataset, "method": label, "wire": wire, "net": net, "ranks": ranks, "reached": i is not None,
           "seconds_to_tol": None if i is None else h["seconds"][i],
           "bytes_to_tol": None if i is None else h["wire_bytes"][i],
           "iterations_to_tol": None if i is None else h["iteration"][i]}
    run = {"dataset": dataset, "method": label, "wire": wire, "loadavg_start": loadavg, "status": trace["status"],
           "compile_seconds": trace.get("compile_seconds"), "iterations": trace.get("iterations"),
           "final_rel_err": h["dist_sq"][-1] / x_star_sq,
           "history": {"iteration": h["iteration"], "seconds": h["seconds"], "wire_bytes": h["wire_bytes"],
                       "rel_err": [None if d is None else d / x_star_sq for d in h["dist_sq"]]}}
    return {"row": row, "run": run}


def measure(args, launch: Launcher, datasets: Dict[str, Path]) -> Dict[str, list]:
    """Every method on every dataset, one after the other; rows and curves."""
    rows, runs = [], []
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        for dataset, data in datasets.items():
            meta = json.loads((data / "meta.json").read_text())
            x_star_sq = math.fsum(v * v for v in meta["x_star"])
            tol = REL_TOL * x_star_sq
            cfg = {**DATASETS[dataset], **({"iters": args.iters} if args.iters else {})}
            for label, wire, options in METHODS:
                if args.methods and label not in args.methods:
                    continue
                out = Path(tmp) / f"{dataset}-{label}-{wire}.json"
                load = list(os.getloadavg())
                print(f"[{args.net}] {dataset} {label} ({wire}), load {load[0]:.1f}", flush=True)
                launch(run_argv(data, options, cfg, tol, out))
                got = summarize(json.loads(out.read_text()), dataset, label, wire, args.net, args.ranks, tol,
                                x_star_sq, load)
                rows.append(got["row"])
                runs.append(got["run"])
                out.unlink()
    return {"results": rows, "runs": runs}


def run_net(args) -> Dict[str, object]:
    """Prepare the data, run everything on ``args.net``, return the output record."""
    os.environ.update(SINGLE_THREAD_ENV)
    datasets = {}
    if "a5a" in args.datasets:
        datasets["a5a"] = a5a_shards(args.ranks, args.libsvm_dir, args.shards_dir)
    if "sparse-1e6" in args.datasets:
        datasets["sparse-1e6"] = sparse_shards(args.ranks, args.sparse_rows, args.shards_dir)
    machine = machine_info()
    config = {"ranks": args.ranks, "rel_tol": REL_TOL, "datasets": {k: DATASETS[k] for k in datasets},
              "sparse_rows": args.sparse_rows, "iters_override": args.iters}
    if args.net == "shm":
        return {**measure(args, Launcher("shm", args.ranks), datasets), "machine": machine, "config": config}
    with netbed.NetBed(args.ranks, args.net) as bed:
        check = netbed.check_links(bed)
        got = measure(args, Launcher(args.net, args.ranks, bed), datasets)
        return {**got, "machine": machine, "config": config, "netbed": {**bed.describe(), "link_check": check}}


# ----------------------------------------------------------------------------------------------
# tables and figures

def table(results: List[Dict[str, object]]) -> str:
    """Markdown: one row per (net, dataset, method, wire)."""
    lines = ["| net | dataset | method | wire | reached | seconds to tol | MB/rank to tol | iterations |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for r in results:
        sec = "-" if r["seconds_to_tol"] is None else f"{r['seconds_to_tol']:.2f}"
        mb = "-" if r["bytes_to_tol"] is None else f"{r['bytes_to_tol'] / 1e6:.2f}"
        it = "-" if r["iterations_to_tol"] is None else str(r["iterations_to_tol"])
        lines.append(f"| {r['net']} | {r['dataset']} | {r['method']} | {r['wire']} | "
                     f"{'yes' if r['reached'] else 'no'} | {sec} | {mb} | {it} |")
    return "\n".join(lines)


def plot(files: Sequence[Path], out_dir: Path) -> List[Path]:
    """One figure per dataset: relative error vs step seconds, one panel per network."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = [json.loads(Path(f).read_text()) for f in files]
    by_net = {res["results"][0]["net"]: res for res in loaded if res["results"]}
    nets = [n for n in NETS if n in by_net]
    written = []
    for dataset in DATASETS:
        if not any(r["dataset"] == dataset for res in loaded for r in res["runs"]):
            continue
        fig, axes = plt.subplots(1, len(nets), figsize=(4.6 * len(nets), 3.8), squeeze=False)
        for ax, net in zip(axes[0], nets):
            for run in by_net[net]["runs"]:
                if run["dataset"] != dataset:
                    continue
                h = run["history"]
                pts = [(s, e) for s, e in zip(h["seconds"], h["rel_err"]) if e is not None and e > 0]
                ax.semilogy([p[0] for p in pts], [p[1] for p in pts], label=f"{run['method']} ({run['wire']})")
            ax.axhline(REL_TOL, color="grey", lw=0.8, ls="--")
            load = by_net[net]["machine"]["loadavg"][0]
            ax.set_title(f"{dataset}, {net}, {by_net[net]['results'][0]['ranks']} ranks (load {load:.1f})")
            ax.set_xlabel("step seconds")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("||x - x*||^2 / ||x*||^2")
        axes[0][-1].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"time_to_accuracy_{dataset}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--net", choices=NETS, help="shm: plain mpiexec here; 1gbit/10gbit: the namespace test bed (root)")
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--json", type=Path, help="where to write the results")
    p.add_argument("--datasets", nargs="+", choices=tuple(DATASETS), default=list(DATASETS))
    p.add_argument("--methods", nargs="+", choices=sorted({m[0] for m in METHODS}), help="default: all")
    p.add_argument("--iters", type=int, help="iteration cap for every run (default: per dataset, see DATASETS)")
    p.add_argument("--sparse-rows", type=int, default=50_000, help="rows of the generated d = 1e6 problem")
    p.add_argument("--libsvm-dir", type=Path, default=REPO.parent / "shared" / "data" / "libsvm",
                   help="folder holding a5a (default ../shared/data/libsvm)")
    p.add_argument("--shards-dir", type=Path, default=REPO / "data", help="where shards are kept (default data/)")
    p.add_argument("--plot", type=Path, nargs="+", metavar="JSON", help="draw the figures from these results and exit")
    p.add_argument("--figures", type=Path, default=HERE / "results", help="where --plot writes (default benchmarks/results)")
    args = p.parse_args(argv)
    if not args.plot and (args.net is None or args.json is None):
        p.error("--net and --json are required (or --plot JSON...)")
    if args.ranks < 1:
        p.error("--ranks must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.plot:
        for path in plot(args.plot, args.figures):
            print(f"wrote {path}")
        return 0
    try:
        result = run_net(args)
    except Exception as e:  # the bed's errors included: say why, exit non-zero
        print(f"time_to_accuracy: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.json, result)
    print(table(result["results"]))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
