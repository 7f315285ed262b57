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
powersgd    ``powerSGD_hook`` with ``PowerSGDState(matrix_approximation_rank=2, start_powerSGD_iter=2)``,
            its buckets chained in order (``ddp_harness.InOrder``)
intsgd      ``mpiopt.torch.hooks.intsgd_hook`` with ``IntSGDState(wire_dtype="auto")`` (alpha per layer)
==========  =====================================================================================

Every run uses torch.optim.SGD with deep.py's lr (divided by 10 at 60% and 85% of the epochs),
momentum and weight decay, the same initial weights per seed, and the same minibatches. For each
seed, every hook's model is built in each rank's process and they train side by side, one epoch
each in turn, the hooks' order rotated at each epoch: a shared machine that drifts during the run
then weighs on every hook alike (timed hook by hook, whole runs of 5 to 20 s apart, the same code
differed by up to 5 % between hooks from one run to the next).
``bytes_per_step`` is measured: every all-reduce and all-gather of a torch.distributed process group
(the methods of ``ProcessGroup`` that ``dist.all_reduce`` / ``dist.all_gather*`` and mpiopt's
TorchCommunicator call, and the TorchCommunicator's recursive-doubling all-reduce) is wrapped in
this process and the bytes of the tensors this rank hands it are summed over the training steps,
then divided by the steps (mean over ranks): the size of what a hook sums or gathers, whatever
algorithm moves it. ``wire_bytes_per_step`` is what the network interface
sent per training step (its ``tx_bytes`` counter read around each epoch: TCP/IP headers and
acknowledgements included; under ``--net shm`` the loopback's count, shared by all ranks, divided by
the ranks; mean over ranks), which depends on the algorithm: gloo's ring all-reduce sends
2(n - 1) / n times the buffer, mpiopt's recursive doubling (small integer sums) log2(n) times it.
``seconds_per_step`` is the
training wall time per step (slowest rank; evaluation excluded); ``cpu_seconds_per_step`` the CPU
time a rank's process used per training step (all its threads, mean over ranks): on a shared
machine it drifts less than wall time, and it shows what a hook costs apart from the network.
``test_accuracy`` is the final model's accuracy on the test set, mean over the seeds. ``curve`` is the seed-mean ``[cumulative
training seconds (slowest rank, evaluation excluded), test accuracy]`` after each epoch, and
``seconds_to_accuracy`` the first of those seconds at which the curve reaches ``target_accuracy``
(``--target-accuracy``; by default the ``allreduce`` hook's final seed-mean accuracy on that dataset
minus 0.5 points), ``null`` with ``reached: false`` when it never does. ``vs_fp16`` (every hook
but fp16, when fp16 ran): each epoch's seconds against fp16's in the same seed and epoch, which ran
a few seconds apart, as ``median_epoch_ratio`` over those pairs and ``epochs_faster``, the pairs in
which the hook was faster, of ``epochs``.

    python benchmarks/ddp_hooks.py --ranks 4 --epochs 12 --mlp-epochs 6 --seeds 3 \\
        --json benchmarks/results/ddp_hooks.json --net shm

writes OUT (``{"results": [{"hook", "dataset", "test_accuracy", "bytes_per_step",
"wire_bytes_per_step", "seconds_per_step", "cpu_seconds_per_step", "seeds", "curve", "target_accuracy",
"seconds_to_accuracy", "reached", "vs_fp16"}, ...]}``
plus a header of the settings, with ``final_parameters_sha256``: the SHA-256 of each run's final
parameters (``dataset/hook/seedS``), the same on every network and with any other hooks beside
it) and a figure ``<OUT stem>.png`` (per dataset: accuracy vs bytes per step, vs seconds per step,
and vs cumulative training seconds).

``--net shm``: R processes spawned here, gloo over TCP loopback on this machine. ``--net 1gbit`` (or
``10gbit``): the emulated cluster of ``benchmarks/netbed.py`` (root and ``tc`` needed, else it says why
and exits 2): one network namespace per rank with a 1 (10) Gbit/s tbf-shaped link to a bridge; rank K's worker runs
inside namespace K (``ip netns exec``), gloo's rendezvous is at rank 0's bed address and
``GLOO_SOCKET_IFNAME`` is the bed's NIC, so every gradient byte crosses the shaped links. All workers
are ended as soon as one fails, on ``--timeout`` or on a signal, and the bed is always torn down.
The header then also holds ``nic_tx_bytes`` (what the bed's NICs sent over the whole run, set-up
and evaluation included) next to ``hook_bytes`` (what the hooks handed to the collectives while
training, all ranks and runs), and the bed's description. Seconds are wall time on a shared
machine: compare them within one run.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ddp_harness import (DEFAULT_HOOKS, HOOKS, MARKERS, ByteMeter, JobError, Tally, WireMeter,  # noqa: E402
                         add_worker_options, check_bed_bytes, exit_code, finish_worker, join_gloo, make_hook, number,
                         replica_check, run_job, seconds_to, seed_means, side_by_side, slowest, worker_options)
from deep import MOMENTUM, TASKS, WEIGHT_DECAY, accuracy, load_task, make_model, shard  # noqa: E402

DATASETS = ("digits", "a9a")
TARGET_MARGIN = 0.005
"""The default target accuracy is the allreduce hook's final accuracy minus this (0.5 points)."""
PAIRED_WITH = "fp16"
"""The hook every other one is compared with epoch by epoch (``vs_fp16`` in the results)."""


# ---------------------------------------------------------------------------------------------------
# worker side (one process per rank)
# ---------------------------------------------------------------------------------------------------
class HookRun:
    """One model trained under DDP with one hook, an epoch at a time (see :func:`train_seed`)."""

    def __init__(self, hook_name: str, dataset: str, data, epochs: int, seed: int):
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        rank, size = dist.get_rank(), dist.get_world_size()
        task = TASKS[dataset]
        self.hook_name, self.dataset, self.seed, self.epochs = hook_name, dataset, seed, epochs
        self.Xtr, self.ytr, self.Xte, self.yte = (torch.from_numpy(a) for a in data)
        self.rows = torch.from_numpy(shard(len(self.ytr), rank, size))
        self.batch = task["batch"]
        self.steps = (len(self.ytr) // size) // self.batch
        torch.manual_seed(seed)
        self.ddp = DistributedDataParallel(make_model(task["model"], self.Xtr.shape[1] if self.Xtr.ndim == 2 else 0))
        self.opt = torch.optim.SGD(self.ddp.parameters(), lr=task["lr"], momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
        self.state, hook = make_hook(hook_name, self.opt, seed)
        self.ddp.register_comm_hook(self.state, hook)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, [int(0.6 * epochs), int(0.85 * epochs)], gamma=0.1)
        self.rng = np.random.default_rng([seed, rank])
        self.tally, self.curve = Tally(), []

    def epoch(self, meter: ByteMeter, wire: WireMeter) -> None:
        """One timed epoch (after a barrier), then the evaluation (not timed)."""
        import torch

        order = self.rows[torch.from_numpy(self.rng.permutation(len(self.rows))[: self.steps * self.batch])]
        with self.tally.timed(meter, wire):
            for s in range(self.steps):
                idx = order[s * self.batch:(s + 1) * self.batch]
                self.opt.zero_grad()
                torch.nn.functional.cross_entropy(self.ddp(self.Xtr[idx]), self.ytr[idx]).backward()
                self.opt.step()
        self.sched.step()
        self.curve.append([slowest(self.tally.seconds), accuracy(self.ddp.module, self.Xte, self.yte)])

    def record(self) -> Dict[str, Any]:
        """The run's record (the same on every rank)."""
        steps = self.steps * self.epochs
        return {"hook": self.hook_name, "dataset": self.dataset, "seed": self.seed,
                "test_accuracy": self.curve[-1][1], **self.tally.per_step(steps),
                "seconds_per_step": self.curve[-1][0] / steps, "steps": steps, "curve": self.curve,
                **replica_check(self.ddp),
                "hook_stats": self.state.stats() if hasattr(self.state, "stats") else None}


def train_seed(hooks: List[str], dataset: str, data, epochs: int, seed: int, meter: ByteMeter,
               wire: WireMeter) -> List[Dict[str, Any]]:
    """Train one model per hook, epoch by epoch in turns (:func:`ddp_harness.side_by_side`); their records.

    ``curve`` holds, after each epoch, the slowest rank's cumulative training seconds and the test
    accuracy (evaluation and the per-epoch barrier are not timed). Each model sees the same
    minibatches, and trains the same bits, as it would alone (no model draws random numbers after
    its initialization)."""
    return side_by_side(hooks, epochs, lambda hook: HookRun(hook, dataset, data, epochs, seed),
                        lambda run, _: run.epoch(meter, wire))


def epochs_of(dataset: str, args) -> int:
    """--epochs for the CNN, --mlp-epochs (else --epochs) for the MLP."""
    return args.epochs if TASKS[dataset]["model"] == "cnn" else args.mlp_epochs or args.epochs


def worker(rank: int, args, init_method: str) -> None:
    """Rank ``rank`` of the job: join the gloo group at ``init_method``, train every hook's model on
    each dataset, seed by seed (:func:`train_seed`); rank 0 writes the records to ``args.worker_out``.
    Ends the process."""
    join_gloo(rank, args.ranks, init_method)
    meter, wire = ByteMeter(), WireMeter(args.ranks)
    records = []
    for dataset in args.datasets:
        data = load_task(dataset, Path(args.libsvm_dir))
        for seed in range(args.seeds):
            for rec in train_seed(args.hooks, dataset, data, epochs_of(dataset, args), seed, meter, wire):
                records.append(rec)
                if rank == 0:
                    print(f"{dataset:7s} {rec['hook']:9s} seed {seed}  acc {rec['test_accuracy']:.4f}  "
                          f"{rec['bytes_per_step']:9.0f} B/step  "
                          f"{number(rec['wire_bytes_per_step'], '.0f'):>9s} wire B/step  "
                          f"{1e3 * rec['seconds_per_step']:.2f} ms/step  "
                          f"{1e3 * rec['cpu_seconds_per_step']:.2f} CPU ms/step",
                          flush=True)
    finish_worker(rank, args.worker_out, records)


# ---------------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------------
def aggregate(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One result per (dataset, hook): means over the seeds, the curve's too (epoch by epoch)."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["hook"], r["dataset"]), []).append(r)
    return [{"hook": hook, "dataset": dataset,
             **seed_means(runs, ("test_accuracy", "bytes_per_step", "seconds_per_step", "cpu_seconds_per_step"))}
            for (hook, dataset), runs in groups.items()]


def epoch_seconds(curve: List[List[float]]) -> np.ndarray:
    """Each epoch's training seconds: the increments of a curve's cumulative seconds."""
    return np.diff([0.0] + [point[0] for point in curve])


def add_epoch_pairs(results: List[Dict[str, Any]], records: List[Dict[str, Any]], base: str = PAIRED_WITH) -> None:
    """Give every result but ``base``'s ``vs_<base>``: its epoch seconds against ``base``'s in the
    same (seed, epoch) -- the two trained in turn, a few seconds apart, so a drifting machine weighs
    on both alike -- as the median ratio over the pairs and the number of pairs it was faster in."""
    epochs = {(r["dataset"], r["hook"], r["seed"]): epoch_seconds(r["curve"]) for r in records}
    for result in results:
        mine = [(t, epochs.get((result["dataset"], base, seed))) for seed in result["seeds"]
                for t in [epochs[(result["dataset"], result["hook"], seed)]]]
        if result["hook"] == base or any(b is None for _, b in mine):
            continue
        ratios = np.concatenate([t / b for t, b in mine])
        result[f"vs_{base}"] = {"median_epoch_ratio": float(np.median(ratios)),
                                "epochs_faster": int((ratios < 1).sum()), "epochs": int(ratios.size)}


def add_time_to_accuracy(results: List[Dict[str, Any]], given: Optional[float]) -> Dict[str, Optional[float]]:
    """Give every result its dataset's ``target_accuracy``, the ``seconds_to_accuracy`` of its curve
    and whether it was ``reached``; returns the target of each dataset.

    The target is ``given``, else the allreduce hook's final accuracy minus TARGET_MARGIN: as good
    as uncompressed DDP up to noise, so the time to it compares what the hooks cost to get there
    (None for a dataset without an allreduce run)."""
    targets: Dict[str, Optional[float]] = {r["dataset"]: given for r in results}
    if given is None:
        targets.update({r["dataset"]: r["test_accuracy"] - TARGET_MARGIN for r in results if r["hook"] == "allreduce"})
    for r in results:
        target = targets[r["dataset"]]
        seconds = None if target is None else seconds_to(r["curve"], lambda accuracy: accuracy >= target)
        r.update(target_accuracy=targets[r["dataset"]], seconds_to_accuracy=seconds, reached=seconds is not None)
    return targets


def plot(results: List[Dict[str, Any]], targets: Dict[str, Optional[float]], out: Path) -> None:
    """Per dataset (one row): test accuracy against bytes per step, against seconds per step, and
    against cumulative training seconds (one line per hook, the target dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(len(datasets), 3, figsize=(15, 3.8 * len(datasets)), squeeze=False)
    for row, dataset in zip(axes, datasets):
        for r in (r for r in results if r["dataset"] == dataset):
            marker = MARKERS[HOOKS.index(r["hook"])]
            for ax, key in zip(row, ("bytes_per_step", "seconds_per_step")):
                ax.scatter(r[key], 100 * r["test_accuracy"], s=90 if r["hook"] == "intsgd" else 50, label=r["hook"],
                           marker=marker, alpha=0.8)
            curve = np.asarray(r["curve"])
            row[2].plot(curve[:, 0], 100 * curve[:, 1], marker=marker, ms=4, label=r["hook"], alpha=0.8)
        if targets[dataset] is not None:
            row[2].axhline(100 * targets[dataset], color="gray", ls="--", lw=1, label="target")
        row[0].legend(fontsize=8)
        row[0].set(xlabel="bytes per step per rank", ylabel="test accuracy (%)", xscale="log", title=dataset)
        row[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        row[1].set(xlabel="seconds per step", ylabel="test accuracy (%)", title=dataset)
        row[2].legend(fontsize=8)
        row[2].set(xlabel="cumulative training seconds (slowest rank)", ylabel="test accuracy (%)",
                   title=f"{dataset}: time to accuracy")
        for ax in row:
            ax.grid(alpha=0.3)
            ax.ticklabel_format(axis="y", useOffset=False)  # accuracies that differ in the 3rd decimal
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def print_table(results: List[Dict[str, Any]], targets: Dict[str, Optional[float]]) -> None:
    """Accuracy, bytes, time per step and seconds to the target, against the allreduce hook."""
    base = {r["dataset"]: r for r in results if r["hook"] == "allreduce"}
    pair = f"vs_{PAIRED_WITH}"
    print(f"{'dataset':8s} {'hook':9s} {'test acc':>8s} {'vs fp32':>8s} {'B/step':>9s} {'fp32/B':>7s} {'wire B':>9s} "
          f"{'ms/step':>8s} {'CPU ms':>7s} {'s to tgt':>8s}  epochs {pair} (median ratio, faster in)")
    for r in results:
        b = base.get(r["dataset"], r)
        to = f"{r['seconds_to_accuracy']:8.2f}" if r["reached"] else f"{'never':>8s}"
        vs = (f"{r[pair]['median_epoch_ratio']:.3f}, {r[pair]['epochs_faster']} of {r[pair]['epochs']}"
              if pair in r else "")
        print(f"{r['dataset']:8s} {r['hook']:9s} {100 * r['test_accuracy']:8.2f} "
              f"{100 * (r['test_accuracy'] - b['test_accuracy']):+8.2f} {r['bytes_per_step']:9.0f} "
              f"{b['bytes_per_step'] / r['bytes_per_step']:7.2f} {number(r['wire_bytes_per_step'], '.0f'):>9s} "
              f"{1e3 * r['seconds_per_step']:8.2f} "
              f"{1e3 * r['cpu_seconds_per_step']:7.2f} {to}  {vs}")
    print("target test accuracy: " + ", ".join(f"{d} {'none (no allreduce run)' if t is None else f'{100 * t:.2f}%'}"
                                               for d, t in targets.items()))


def bed_options(args, rank: int, init_method: str) -> List[str]:
    """The options that make this script run rank ``rank`` of ``args``'s job (datasets already
    filtered, paths absolute)."""
    opts = ["--json", args.json, "--ranks", str(args.ranks), "--epochs", str(args.epochs), "--seeds", str(args.seeds),
            "--libsvm-dir", str(args.libsvm_dir.resolve()), "--datasets", *args.datasets, "--hooks", *args.hooks]
    if args.mlp_epochs is not None:
        opts += ["--mlp-epochs", str(args.mlp_epochs)]
    return opts + worker_options(args, rank, init_method)


def runnable_datasets(args) -> List[str]:
    """The asked datasets whose files exist (digits always does); says why each other one is skipped."""
    datasets = []
    for dataset in args.datasets:
        missing = [n for n in (dataset, dataset + ".t") if dataset != "digits" and not (args.libsvm_dir / n).is_file()]
        if missing:
            print(f"skipping {dataset}: {', '.join(missing)} not found in {args.libsvm_dir}", flush=True)
        else:
            datasets.append(dataset)
    return datasets


def drive(args) -> None:
    """Run the job on the asked network, then write the JSON and the figure and print the table."""
    args.datasets = runnable_datasets(args)
    args.hooks = list(dict.fromkeys(args.hooks))  # a hook named twice is one model (they train side by side)
    if not args.datasets:
        raise JobError("no dataset to run")
    t0 = time.perf_counter()
    records, net = run_job(args, Path(__file__), worker, bed_options)
    out = Path(args.json)
    results = aggregate(records)
    add_epoch_pairs(results, records)
    targets = add_time_to_accuracy(results, args.target_accuracy)
    plot(results, targets, out.with_suffix(".png"))
    hook_bytes = sum(r["sent_bytes"] for r in records)
    header = {"ranks": args.ranks, "net": args.net, **net, "hook_bytes": hook_bytes,
              "epochs": {d: epochs_of(d, args) for d in args.datasets},
              "tasks": {d: TASKS[d] for d in args.datasets}, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
              "target_accuracy": targets,
              "target_rule": "--target-accuracy" if args.target_accuracy is not None else
              f"allreduce's final seed-mean test accuracy - {TARGET_MARGIN}",
              "identical_on_all_ranks": all(r["identical_on_all_ranks"] for r in records),
              "final_parameters_sha256": {f"{r['dataset']}/{r['hook']}/seed{r['seed']}": r["parameters_sha256"]
                                          for r in records},
              "intsgd_stats": [{"hook": r["hook"], **r["hook_stats"]} for r in records
                               if r["hook"].startswith("intsgd")],
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    out.write_text(json.dumps({**header, "results": results}, indent=1))
    print_table(results, targets)
    check_bed_bytes(net, hook_bytes, out)


def fraction(text: str) -> float:
    """An accuracy in (0, 1] (argparse type)."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"an accuracy is a fraction in (0, 1], got {text}")
    return value


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--epochs", type=int, default=8, help="epochs of the CNN (and of the MLP unless --mlp-epochs)")
    p.add_argument("--mlp-epochs", type=int, default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--json", required=True, help="output JSON (the figure goes next to it, .png)")
    p.add_argument("--net", choices=("shm", "10gbit", "1gbit"), default="shm")
    p.add_argument("--libsvm-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "libsvm")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--hooks", nargs="+", choices=HOOKS, default=list(DEFAULT_HOOKS))
    p.add_argument("--target-accuracy", type=fraction, default=None,
                   help="test accuracy (fraction) for seconds_to_accuracy; default: per dataset, the allreduce "
                        f"hook's final seed-mean accuracy - {TARGET_MARGIN}")
    p.add_argument("--timeout", type=float, default=None,
                   help="on the bed: seconds the workers may take before all are ended (default: no limit)")
    add_worker_options(p)
    args = p.parse_args(argv)
    if args.worker_rank is not None:
        worker(args.worker_rank, args, args.worker_init)
    return exit_code(drive, args, "ddp_hooks")


if __name__ == "__main__":
    sys.exit(main())
