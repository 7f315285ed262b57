"""DDP communication hooks compared: fp32 allreduce, torch's fp16 / bf16 / PowerSGD hooks, mpiopt's intsgd_hook.

The same models and data as ``benchmarks/deep.py`` (the digits CNN; the a9a MLP when ``a9a`` and
``a9a.t`` are in ``--libsvm-dir``, else skipped with the reason), trained under
DistributedDataParallel over gloo by R processes on this machine, with each hook:

==========  =====================================================================================
hook        what it is
==========  =====================================================================================
allreduce   ``default_hooks.allreduce_hook``: what DDP does without a hook (fp32 sum / R)
fp16        ``default_hooks.fp16_compress_hook``
bf16        ``default_hooks.bf16_compress_hook`` (called from a wrapper: DDP refuses it by name without CUDA)
powersgd    ``powerSGD_hook`` with ``PowerSGDState(matrix_approximation_rank=2, start_powerSGD_iter=2)``
intsgd      ``mpiopt.torch.hooks.intsgd_hook`` with ``IntSGDState(wire_dtype="auto")`` (alpha per layer)
==========  =====================================================================================

Every run uses torch.optim.SGD with deep.py's lr (divided by 10 at 60% and 85% of the epochs),
momentum and weight decay, the same initial weights per seed, and the same minibatches.
``bytes_per_step`` is measured: every torch.distributed collective the hooks call (all_reduce,
all_gather*) is wrapped in this process and the bytes of the tensor this rank hands it are summed
over the training steps, then divided by the steps (mean over ranks). ``seconds_per_step`` is the
training wall time per step (slowest rank; evaluation excluded). ``test_accuracy`` is the final
model's accuracy on the test set, mean over the seeds.

    python benchmarks/ddp_hooks.py --ranks 4 --epochs 8 --mlp-epochs 1 --seeds 3 \\
        --json benchmarks/results/ddp_hooks.json --net shm

writes OUT (``{"results": [{"hook", "dataset", "test_accuracy", "bytes_per_step",
"seconds_per_step", "seeds"}, ...]}`` plus a header of the settings) and a figure ``<OUT stem>.png``
(accuracy vs bytes per step and vs seconds per step). ``--net shm``: gloo over TCP loopback on this
machine. The emulated 1 Gbit/s network (``benchmarks/netbed.py``) is not wired in yet: ``--net
1gbit`` stops with a message. Seconds are wall time on a shared machine: compare them within one run.
"""

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from deep import MOMENTUM, TASKS, WEIGHT_DECAY, accuracy, load_task, make_model, shard  # noqa: E402

HOOKS = ("allreduce", "fp16", "bf16", "powersgd", "intsgd")
MARKERS = ("o", "s", "D", "^", "*")
DATASETS = ("digits", "a9a")
GATHERS = ("all_gather_single", "all_gather_into_tensor", "all_gather")


# ---------------------------------------------------------------------------------------------------
# worker side (one process per rank)
# ---------------------------------------------------------------------------------------------------
class ByteMeter:
    """Counts the bytes this rank hands to torch.distributed's all_reduce / all_gather* while on.

    The hooks look these functions up in ``torch.distributed`` at each call, so wrapping the module's
    attributes sees every collective of every hook (torch's and mpiopt's alike)."""

    def __init__(self):
        import torch.distributed as dist

        self.on, self.bytes = False, 0
        dist.all_reduce = self._wrap(dist.all_reduce, lambda args, kw: args[0] if args else kw["tensor"])
        for name in GATHERS:  # (output, input): the input is what this rank sends
            setattr(dist, name, self._wrap(getattr(dist, name), lambda args, kw: args[1] if len(args) > 1 else
                                           kw.get("input_tensor", kw.get("tensor"))))

    def _wrap(self, fn: Callable, sent: Callable) -> Callable:
        def counted(*args, **kw):
            if self.on:
                t = sent(args, kw)
                self.bytes += t.numel() * t.element_size()
            return fn(*args, **kw)

        return counted


def make_hook(name: str, opt, seed: int):
    """(state, hook) of one hook name."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    from mpiopt.torch.hooks import IntSGDState, intsgd_hook

    if name == "intsgd":
        return IntSGDState(None, opt, wire_dtype="auto", seed=seed), intsgd_hook
    if name == "powersgd":
        return powerSGD_hook.PowerSGDState(None, matrix_approximation_rank=2, start_powerSGD_iter=2,
                                           random_seed=seed), powerSGD_hook.powerSGD_hook
    if name == "bf16":
        return None, bf16_on_cpu
    hook = {"allreduce": default_hooks.allreduce_hook, "fp16": default_hooks.fp16_compress_hook}[name]
    return None, hook


def bf16_on_cpu(process_group, bucket):
    """torch's ``bf16_compress_hook`` itself, under another name: DDP refuses that name unless CUDA
    and NCCL are present, but gloo sums bfloat16 on CPUs."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return default_hooks.bf16_compress_hook(process_group, bucket)


def train_one(hook_name: str, dataset: str, data, epochs: int, seed: int, meter: ByteMeter) -> Dict[str, Any]:
    """Train one model under DDP with one hook; every rank returns the same record."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    rank, size = dist.get_rank(), dist.get_world_size()
    task = TASKS[dataset]
    Xtr, ytr, Xte, yte = (torch.from_numpy(a) for a in data)
    rows = torch.from_numpy(shard(len(ytr), rank, size))
    batch = task["batch"]
    steps = (len(ytr) // size) // batch
    torch.manual_seed(seed)
    ddp = DistributedDataParallel(make_model(task["model"], Xtr.shape[1] if Xtr.ndim == 2 else 0))
    opt = torch.optim.SGD(ddp.parameters(), lr=task["lr"], momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    state, hook = make_hook(hook_name, opt, seed)
    ddp.register_comm_hook(state, hook)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.6 * epochs), int(0.85 * epochs)], gamma=0.1)
    rng = np.random.default_rng([seed, rank])
    meter.bytes, seconds = 0, 0.0
    for _ in range(epochs):
        order = rows[torch.from_numpy(rng.permutation(len(rows))[: steps * batch])]
        dist.barrier()
        t0 = time.perf_counter()
        meter.on = True
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(Xtr[idx]), ytr[idx]).backward()
            opt.step()
        meter.on = False
        seconds += time.perf_counter() - t0
        sched.step()
    totals = torch.tensor([meter.bytes, seconds], dtype=torch.float64)
    slowest = totals.clone()
    dist.all_reduce(totals)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
    params = torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])
    every = [torch.empty_like(params) for _ in range(size)]
    dist.all_gather(every, params)
    return {"hook": hook_name, "dataset": dataset, "seed": seed, "test_accuracy": accuracy(ddp.module, Xte, yte),
            "bytes_per_step": float(totals[0]) / size / (steps * epochs),
            "seconds_per_step": float(slowest[1]) / (steps * epochs), "steps": steps * epochs,
            "identical_on_all_ranks": all(torch.equal(e, every[0]) for e in every),
            "hook_stats": state.stats() if hasattr(state, "stats") else None}


def epochs_of(dataset: str, args) -> int:
    """--epochs for the CNN, --mlp-epochs (else --epochs) for the MLP."""
    return args.epochs if TASKS[dataset]["model"] == "cnn" else args.mlp_epochs or args.epochs


def worker(rank: int, args, port: int) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.ranks)
    from mpiopt.kernels import cpu_kernel, warm_up

    warm_up(cpu_kernel())  # intsgd's quantizer compiled before any timed step, as mpiopt run does
    meter = ByteMeter()
    records = []
    for dataset in args.datasets:
        data = load_task(dataset, Path(args.libsvm_dir))
        for hook_name in args.hooks:
            for seed in range(args.seeds):
                rec = train_one(hook_name, dataset, data, epochs_of(dataset, args), seed, meter)
                records.append(rec)
                if rank == 0:
                    print(f"{dataset:7s} {hook_name:9s} seed {seed}  acc {rec['test_accuracy']:.4f}  "
                          f"{rec['bytes_per_step']:9.0f} B/step  {1e3 * rec['seconds_per_step']:.2f} ms/step",
                          flush=True)
    if rank == 0:
        Path(args.worker_out).write_text(json.dumps(records))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip torch's C++ teardown, which can SIGABRT a finished worker and fail the whole spawn


# ---------------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------------
def aggregate(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One result per (dataset, hook): means over the seeds."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["hook"], r["dataset"]), []).append(r)
    return [{"hook": hook, "dataset": dataset,
             **{key: float(np.mean([r[key] for r in runs])) for key in ("test_accuracy", "bytes_per_step",
                                                                        "seconds_per_step")},
             "seeds": [r["seed"] for r in runs]} for (hook, dataset), runs in groups.items()]


def plot(results: List[Dict[str, Any]], out: Path) -> None:
    """Test accuracy against bytes per step and against seconds per step, one row per dataset."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(len(datasets), 2, figsize=(10, 3.8 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        for r in (r for r in results if r["dataset"] == dataset):
            for ax, key in zip(row, ("bytes_per_step", "seconds_per_step")):
                ax.scatter(r[key], 100 * r["test_accuracy"], s=90 if r["hook"] == "intsgd" else 50, label=r["hook"],
                           marker=MARKERS[HOOKS.index(r["hook"])], alpha=0.8)
        row[0].legend(fontsize=8)
        row[0].set(xlabel="bytes per step per rank", ylabel="test accuracy (%)", xscale="log", title=dataset)
        row[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        row[1].set(xlabel="seconds per step", ylabel="test accuracy (%)", title=dataset)
        for ax in row:
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drive(args) -> None:
    import torch.multiprocessing as mp

    if args.net != "shm":
        raise SystemExit("--net 1gbit: the emulated network of benchmarks/netbed.py is not wired into this "
                         "script yet; run with --net shm")
    datasets = []
    for dataset in args.datasets:
        missing = [n for n in (dataset, dataset + ".t") if dataset != "digits" and not (args.libsvm_dir / n).is_file()]
        if missing:
            print(f"skipping {dataset}: {', '.join(missing)} not found in {args.libsvm_dir}", flush=True)
        else:
            datasets.append(dataset)
    args.datasets = datasets
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    args.worker_out = str(out.with_name(out.stem + "-raw.json"))
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    mp.spawn(worker, args=(args, free_port()), nprocs=args.ranks, join=True)
    raw = Path(args.worker_out)
    records = json.loads(raw.read_text())
    raw.unlink()
    results = aggregate(records)
    plot(results, out.with_suffix(".png"))
    header = {"ranks": args.ranks, "net": args.net, "transport": "gloo over TCP loopback, one machine",
              "epochs": {d: epochs_of(d, args) for d in args.datasets},
              "tasks": {d: TASKS[d] for d in args.datasets}, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
              "identical_on_all_ranks": all(r["identical_on_all_ranks"] for r in records),
              "intsgd_stats": [r["hook_stats"] for r in records if r["hook"] == "intsgd"],
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    out.write_text(json.dumps({**header, "results": results}, indent=1))
    base = {r["dataset"]: r for r in results if r["hook"] == "allreduce"}
    print(f"{'dataset':8s} {'hook':9s} {'test acc':>8s} {'vs fp32':>8s} {'B/step':>9s} {'fp32/B':>7s} {'ms/step':>8s}")
    for r in results:
        b = base.get(r["dataset"], r)
        print(f"{r['dataset']:8s} {r['hook']:9s} {100 * r['test_accuracy']:8.2f} "
              f"{100 * (r['test_accuracy'] - b['test_accuracy']):+8.2f} {r['bytes_per_step']:9.0f} "
              f"{b['bytes_per_step'] / r['bytes_per_step']:7.2f} {1e3 * r['seconds_per_step']:8.2f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--epochs", type=int, default=8, help="epochs of the CNN (and of the MLP unless --mlp-epochs)")
    p.add_argument("--mlp-epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", required=True, help="output JSON (the figure goes next to it, .png)")
    p.add_argument("--net", choices=("shm", "1gbit"), default="shm")
    p.add_argument("--libsvm-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "libsvm")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--hooks", nargs="+", choices=HOOKS, default=list(HOOKS))
    drive(p.parse_args(argv))


if __name__ == "__main__":
    main()
