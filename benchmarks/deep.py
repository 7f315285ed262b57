"""Deep-learning benchmark: mpiopt's torch optimizers training real models over R MPI ranks on CPU.

Two tasks, both on real data and offline:

* ``digits``: a small CNN (2 conv + 2 dense layers, 38k parameters) on scikit-learn's bundled 8x8
  handwritten digits (1797 images; stratified 75/25 train/test split);
* an MLP (123-64-2 on ``a9a`` / 300-64-2 on ``w8a``) on a LIBSVM set from ``--libsvm-dir``, with its
  own ``.t`` test file.

The train set is shuffled once and split into R shards; every rank takes the same number of
minibatches per epoch from its own shard (reshuffled each epoch with its own generator), so all ranks
meet at every collective. Every method starts from the same weights and takes the same lr (divided by
10 at 60% and 85% of the epochs), momentum and weight decay -- EF-signSGD excepted, see ``HYPER`` --
so what differs is what crosses the wire. Test accuracy is the accuracy of the
final model on the whole test set; ``wire_bytes`` is the bytes one rank handed to MPI over the run
(mean over ranks); ``seconds_per_epoch`` the mean training wall time of an epoch (slowest rank,
evaluation excluded).

    python benchmarks/deep.py --ranks 4 --epochs 40 --mlp-epochs 8 --seeds 3 --json benchmarks/results/deep.json

launches ``mpiexec -n R`` itself and writes OUT (``{"results": [...]}``, one entry per dataset and
method, means over the seeds), the per-epoch traces of every run (``<OUT stem>-traces.json``), a
figure (``<OUT stem>.png``: test accuracy vs epoch and vs bytes) and a markdown table (``.md``).
``--epochs`` is the CNN's (and the MLP's unless ``--mlp-epochs``). Seconds are wall time on a
shared machine: compare them within one run only.
"""

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import run_mpi  # noqa: E402

METHODS: Dict[str, Dict[str, Any]] = {
    # method name (as in ``mpiopt run``) -> options of its torch optimizer
    "sgd": {},
    "intsgd": {"wire_dtype": "int8", "block": "layer", "alpha0": 100.0},
    "hintsgd": {"bits": 8},
    "natsgd": {},
    "qsgd": {"levels": 127},
    "ef-signsgd": {},
    "dgc": {"density": 0.01, "warmup_iters": 50},
    "powersgd": {"rank": 4},
}
HYPER: Dict[str, Dict[str, float]] = {
    # the only departures from the shared lr / momentum: EF-signSGD's single scale ||p||_1 / d makes
    # its steps of another size, and it diverges with heavy-ball momentum on top (tuned on digits)
    "ef-signsgd": {"lr_factor": 4.0, "momentum": 0.0},
}
TASKS = {
    # dataset -> model, per-rank batch, lr
    "digits": {"model": "cnn", "batch": 32, "lr": 0.05},
    "a9a": {"model": "mlp", "batch": 64, "lr": 0.05, "n_features": 123},
    "w8a": {"model": "mlp", "batch": 64, "lr": 0.05, "n_features": 300},
}
MOMENTUM, WEIGHT_DECAY, SPLIT_SEED = 0.9, 1e-4, 0


# ---------------------------------------------------------------------------------------------------
# worker side (runs under mpiexec)
# ---------------------------------------------------------------------------------------------------
def load_task(dataset: str, libsvm_dir: Path) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(X_train, y_train, X_test, y_test): float32 features, int64 class labels."""
    if dataset == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, y = load_digits(return_X_y=True)
        X = (X / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
        Xtr, Xte, ytr, yte = train_test_split(X, y.astype(np.int64), test_size=0.25, stratify=y,
                                              random_state=SPLIT_SEED)
        return Xtr, ytr, Xte, yte
    from mpiopt.data import load_libsvm

    n_features = TASKS[dataset]["n_features"]
    parts = []
    for name in (dataset, dataset + ".t"):
        path = libsvm_dir / name
        if not path.is_file():
            raise SystemExit(f"{path} not found: pass --libsvm-dir (the folder holding {dataset} and {dataset}.t)")
        X, y = load_libsvm(path, n_features)
        parts += [X.toarray().astype(np.float32), (y > 0).astype(np.int64)]
    return tuple(parts)


def make_model(kind: str, n_features: int):
    import torch.nn as nn

    if kind == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
        )
    return nn.Sequential(nn.Linear(n_features, 64), nn.ReLU(), nn.Linear(64, 2))


def shard(n_rows: int, rank: int, size: int) -> np.ndarray:
    """This rank's rows: one shuffle of all training rows (same on every rank), split in R parts."""
    order = np.random.default_rng(SPLIT_SEED).permutation(n_rows)
    return np.array_split(order, size)[rank]


def accuracy(model, X, y) -> float:
    import torch

    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def train_one(method: str, dataset: str, data, epochs: int, seed: int, comm) -> Dict[str, Any]:
    """Train one model with one method on every rank (``seed``: weights, shuffles, rounding noise);
    rank 0's return value holds the result and the per-epoch trace."""
    import torch
    from mpi4py import MPI

    import mpiopt.torch as mt

    rank, size = comm.Get_rank(), comm.Get_size()
    task = TASKS[dataset]
    Xtr, ytr, Xte, yte = (torch.from_numpy(a) for a in data)
    rows = torch.from_numpy(shard(len(ytr), rank, size))
    batch = task["batch"]
    steps = (len(ytr) // size) // batch  # the smallest shard's full batches: the same on every rank
    torch.manual_seed(seed)
    model = make_model(task["model"], Xtr.shape[1] if Xtr.ndim == 2 else 0)
    hyper = HYPER.get(method, {})
    opt = mt.OPTIMIZERS[method](model.parameters(), lr=task["lr"] * hyper.get("lr_factor", 1.0),
                                momentum=hyper.get("momentum", MOMENTUM), weight_decay=WEIGHT_DECAY, seed=seed,
                                **METHODS[method])
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.6 * epochs), int(0.85 * epochs)], gamma=0.1)
    rng = np.random.default_rng([seed, rank])
    loss_fn = torch.nn.functional.cross_entropy
    trace: Dict[str, List[float]] = {key: [] for key in ("epoch", "test_accuracy", "train_loss", "wire_bytes",
                                                          "seconds")}
    stats = np.empty(3)
    for epoch in range(1, epochs + 1):
        order = rows[torch.from_numpy(rng.permutation(len(rows))[: steps * batch])]
        comm.Barrier()
        t0 = time.perf_counter()
        total = 0.0
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            opt.zero_grad()
            loss = loss_fn(model(Xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            total += loss.item()
        seconds = time.perf_counter() - t0
        sched.step()
        stats[:] = (total / steps, opt.wire_bytes, seconds)
        comm.Allreduce(MPI.IN_PLACE, stats[:2], op=MPI.SUM)  # plain mpi4py: not counted as wire bytes
        comm.Allreduce(MPI.IN_PLACE, stats[2:], op=MPI.MAX)
        trace["epoch"].append(epoch)
        trace["train_loss"].append(stats[0] / size)
        trace["wire_bytes"].append(stats[1] / size)
        trace["seconds"].append(float(stats[2]))
        trace["test_accuracy"].append(accuracy(model, Xte, yte) if rank == 0 else math.nan)
    params = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()
    every = np.empty((size, params.size), dtype=params.dtype)
    comm.Allgather(params, every)
    return {
        "method": method, "dataset": dataset, "model": task["model"], "epochs": epochs, "seed": seed,
        "test_accuracy": trace["test_accuracy"][-1], "wire_bytes": trace["wire_bytes"][-1],
        "seconds_per_epoch": float(np.mean(trace["seconds"])), "train_loss": trace["train_loss"][-1],
        "parameters": int(params.size), "steps_per_epoch": steps, "clipped": int(opt.clipped),
        "identical_on_all_ranks": bool((every == every[0]).all()), "trace": trace,
    }


def worker(args) -> None:
    import torch
    from mpi4py import MPI

    torch.set_num_threads(1)
    comm = MPI.COMM_WORLD
    records = []
    for dataset in args.datasets:
        data = load_task(dataset, Path(args.libsvm_dir))
        epochs = args.epochs if TASKS[dataset]["model"] == "cnn" else args.mlp_epochs or args.epochs
        for method in args.methods:
            for seed in range(args.seeds):
                rec = train_one(method, dataset, data, epochs, seed, comm)
                records.append(rec)
                if comm.Get_rank() == 0:
                    print(f"{dataset:7s} {method:11s} seed {seed}  acc {rec['test_accuracy']:.4f}  "
                          f"bytes/rank {rec['wire_bytes']:.4g}  {rec['seconds_per_epoch']:.3f} s/epoch", flush=True)
    if comm.Get_rank() == 0:
        Path(args.worker_out).write_text(json.dumps(records))


# ---------------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------------
def aggregate(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One result per (dataset, method): means over the seeds, the per-seed accuracies, mean trace."""
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    results = []
    for (dataset, method), runs in groups.items():
        first = runs[0]
        mean = {key: float(np.mean([r[key] for r in runs]))
                for key in ("test_accuracy", "wire_bytes", "seconds_per_epoch", "train_loss")}
        trace = {key: np.mean([r["trace"][key] for r in runs], axis=0).tolist() for key in first["trace"]}
        results.append({
            "method": method, "dataset": dataset, "model": first["model"], "epochs": first["epochs"], **mean,
            "test_accuracy_per_seed": [r["test_accuracy"] for r in runs], "seeds": [r["seed"] for r in runs],
            "parameters": first["parameters"], "steps_per_epoch": first["steps_per_epoch"],
            "clipped": int(sum(r["clipped"] for r in runs)),
            "identical_on_all_ranks": all(r["identical_on_all_ranks"] for r in runs),
            "options": METHODS[method], "hyper": HYPER.get(method, {}), "trace": trace,
        })
    return results


def summary_table(results: List[Dict[str, Any]]) -> str:
    """Markdown: accuracy, accuracy gap to SGD, bytes per rank and the bytes ratio SGD / method."""
    sgd = {r["dataset"]: r for r in results if r["method"] == "sgd"}
    lines = ["| dataset | model | method | test acc | vs SGD (points) | bytes/rank | SGD bytes / bytes | s/epoch |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        base = sgd.get(r["dataset"])
        gap = f"{100 * (r['test_accuracy'] - base['test_accuracy']):+.2f}" if base else "-"
        ratio = f"{base['wire_bytes'] / r['wire_bytes']:.4f}" if base else "-"
        lines.append(f"| {r['dataset']} | {r['model']} | {r['method']} | {r['test_accuracy']:.4f} | {gap} | "
                     f"{r['wire_bytes']:.4g} | {ratio} | {r['seconds_per_epoch']:.3f} |")
    return "\n".join(lines)


def plot(results: List[Dict[str, Any]], out: Path) -> None:
    """Test accuracy (mean over seeds) against epochs and against bytes sent, one row per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        mine = [r for r in results if r["dataset"] == dataset]
        for r in mine:
            t = r["trace"]
            style = dict(label=r["method"], lw=2.2 if r["method"] in ("intsgd", "sgd") else 1.2)
            row[0].plot(t["epoch"], t["test_accuracy"], **style)
            row[1].plot(t["wire_bytes"], t["test_accuracy"], **style)
        row[0].set(xlabel="epoch", ylabel="test accuracy", title=f"{dataset} ({mine[0]['model']})")
        row[1].set(xlabel="bytes sent per rank", ylabel="test accuracy", xscale="log", title=dataset)
        low = min(min(r["trace"]["test_accuracy"][len(r["trace"]["epoch"]) // 3:]) for r in mine)
        for ax in row:
            ax.set_ylim(max(0.0, low - 0.02), None)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def drive(args) -> None:
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_name(out.stem + "-raw.json")
    t0 = time.perf_counter()
    run_mpi(args.ranks, [sys.executable, str(Path(__file__).resolve()), "--worker", "--worker-out", str(raw),
                         "--epochs", str(args.epochs), "--mlp-epochs", str(args.mlp_epochs or args.epochs),
                         "--seeds", str(args.seeds), "--libsvm-dir", str(args.libsvm_dir), "--datasets", *args.datasets,
                         "--methods", *args.methods], extra_env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    records = json.loads(raw.read_text())
    raw.unlink()
    results = aggregate(records)
    plot(results, out.with_suffix(".png"))
    traces = {f"{r['dataset']}/{r['method']}/seed{r['seed']}": r["trace"] for r in records}
    out.with_name(out.stem + "-traces.json").write_text(json.dumps(traces))
    from mpiopt.comm import library_version

    header = {"ranks": args.ranks, "seeds": args.seeds, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
              "tasks": {d: TASKS[d] for d in args.datasets}, "mpi_library": library_version(),
              "wall_seconds": round(time.perf_counter() - t0, 1),
              "notes": "test_accuracy, wire_bytes (per rank, mean over ranks), seconds_per_epoch and train_loss are "
                       "means over the seeds; the traces are in " + out.stem + "-traces.json"}
    out.write_text(json.dumps({**header, "results": [{k: v for k, v in r.items() if k != "trace"} for r in results]},
                              indent=1))
    table = summary_table(results)
    out.with_suffix(".md").write_text(table + "\n")
    print(table)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--epochs", type=int, default=40, help="epochs of the CNN (and of the MLP unless --mlp-epochs)")
    p.add_argument("--mlp-epochs", type=int, default=None, help="epochs of the MLP on the LIBSVM set")
    p.add_argument("--seeds", type=int, default=1, help="repeat every run with seeds 0..S-1 and average")
    p.add_argument("--json", default=str(REPO / "benchmarks/results/deep.json"), help="where the results go")
    p.add_argument("--datasets", nargs="+", default=["digits", "a9a"], choices=sorted(TASKS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--libsvm-dir", default=str(REPO.parent / "shared/data/libsvm"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
