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

``--net shm``: R processes spawned here, gloo over TCP loopback on this machine. ``--net 1gbit``: the
emulated cluster of ``benchmarks/netbed.py`` (root and ``tc`` needed, else it says why and exits 2):
one network namespace per rank with a 1 Gbit/s tbf-shaped link to a bridge; rank K's worker runs
inside namespace K (``ip netns exec``), gloo's rendezvous is at rank 0's bed address and
``GLOO_SOCKET_IFNAME`` is the bed's NIC, so every gradient byte crosses the shaped links. All workers
are ended as soon as one fails, on ``--timeout`` or on a signal, and the bed is always torn down.
The header then also holds ``nic_tx_bytes`` (what the bed's NICs sent over the whole run, set-up
and evaluation included) next to ``hook_bytes`` (what the hooks handed to the collectives while
training, all ranks and runs), and the bed's description. Seconds are wall time on a shared
machine: compare them within one run.
"""

import argparse
import hashlib
import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import netbed  # noqa: E402
from deep import MOMENTUM, TASKS, WEIGHT_DECAY, accuracy, load_task, make_model, shard  # noqa: E402

HOOKS = ("allreduce", "fp16", "bf16", "powersgd", "intsgd")
MARKERS = ("o", "s", "D", "^", "*")
DATASETS = ("digits", "a9a")
GATHERS = ("all_gather_single", "allgather", "_allgather_base")
TARGET_MARGIN = 0.005
PAIRED_WITH = "fp16"
"""The hook every other one is compared with epoch by epoch (``vs_fp16`` in the results)."""
"""The default target accuracy is the allreduce hook's final accuracy minus this (0.5 points)."""
BED_PORT = 29500
"""gloo's rendezvous port at rank 0's bed address (a fresh namespace: nothing else listens there)."""


# ---------------------------------------------------------------------------------------------------
# worker side (one process per rank)
# ---------------------------------------------------------------------------------------------------
class ByteMeter:
    """Counts the bytes this rank hands to the process groups' all-reduce / all-gather while on.

    Every torch.distributed collective ends in a method of ``torch.distributed.ProcessGroup``
    (``dist.all_reduce`` calls ``allreduce``, ``dist.all_gather_single`` and
    ``all_gather_into_tensor`` call ``all_gather_single``, ``dist.all_gather`` calls ``allgather``),
    and mpiopt's TorchCommunicator calls ``allreduce`` directly, or its recursive-doubling
    all-reduce over send/recv (``DoublingAllreduce``, counted as one all-reduce of its buffer):
    wrapping those methods of the classes sees every collective of every hook (torch's and mpiopt's
    alike)."""

    def __init__(self):
        import torch.distributed as dist

        from mpiopt.torch.doubling import DoublingAllreduce

        self.on, self.bytes = False, 0
        group = dist.ProcessGroup
        group.allreduce = self._wrap(group.allreduce, lambda args: args[0])
        for name in GATHERS:  # (output, input): the input is what this rank sends
            setattr(group, name, self._wrap(getattr(group, name), lambda args: args[1]))
        DoublingAllreduce.__call__ = self._wrap(DoublingAllreduce.__call__, lambda args: args[0])

    def _wrap(self, fn: Callable, sent: Callable) -> Callable:
        def counted(group, *args, **kw):
            if self.on:
                self.bytes += sum(t.numel() * t.element_size() for t in _tensors(sent(args)))
            return fn(group, *args, **kw)

        return counted


class WireMeter:
    """The bytes this rank's network interface sent (``/sys/class/net/IF/statistics/tx_bytes``:
    what crossed the wire, TCP/IP headers and acknowledgements included). Under ``--net shm`` the
    interface is the loopback, shared by all ranks: its count is divided by the ranks. ``None``
    where the counter cannot be read."""

    def __init__(self, interface: str, ranks: int):
        self.path = Path("/sys/class/net") / interface / "statistics" / "tx_bytes"
        self.share = ranks if interface == "lo" else 1

    def read(self) -> Optional[float]:
        try:
            return int(self.path.read_text()) / self.share
        except (OSError, ValueError):
            return None


def _tensors(arg) -> List[Any]:
    """The tensors in a collective's argument: a tensor, or (nested) lists of them."""
    if isinstance(arg, (list, tuple)):
        return [t for a in arg for t in _tensors(a)]
    return [arg]


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


def slowest(seconds: float) -> float:
    """The largest of every rank's ``seconds``: a training phase lasts as long as its slowest rank."""
    import torch
    import torch.distributed as dist

    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


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
        self.sent, self.seconds, self.cpu, self.curve = 0, 0.0, 0.0, []
        self.wire: Optional[float] = 0.0

    def epoch(self, meter: ByteMeter, wire: WireMeter) -> None:
        """One timed epoch (after a barrier), then the evaluation (not timed)."""
        import torch
        import torch.distributed as dist

        order = self.rows[torch.from_numpy(self.rng.permutation(len(self.rows))[: self.steps * self.batch])]
        dist.barrier()
        meter.bytes = 0
        w0 = wire.read()
        t0, c0 = time.perf_counter(), time.process_time()
        meter.on = True
        for s in range(self.steps):
            idx = order[s * self.batch:(s + 1) * self.batch]
            self.opt.zero_grad()
            torch.nn.functional.cross_entropy(self.ddp(self.Xtr[idx]), self.ytr[idx]).backward()
            self.opt.step()
        meter.on = False
        self.seconds += time.perf_counter() - t0
        self.cpu += time.process_time() - c0
        w1 = wire.read()
        self.wire = None if None in (w0, w1, self.wire) else self.wire + w1 - w0
        self.sent += meter.bytes
        self.sched.step()
        self.curve.append([slowest(self.seconds), accuracy(self.ddp.module, self.Xte, self.yte)])

    def record(self) -> Dict[str, Any]:
        """The run's record (the same on every rank)."""
        import torch
        import torch.distributed as dist

        size, steps = dist.get_world_size(), self.steps * self.epochs
        totals = torch.tensor([self.sent, self.cpu, math.nan if self.wire is None else self.wire], dtype=torch.float64)
        dist.all_reduce(totals)
        wire = float(totals[2]) / size / steps
        params = torch.cat([p.detach().reshape(-1) for p in self.ddp.parameters()])
        every = [torch.empty_like(params) for _ in range(size)]
        dist.all_gather(every, params)
        return {"hook": self.hook_name, "dataset": self.dataset, "seed": self.seed,
                "test_accuracy": self.curve[-1][1], "bytes_per_step": float(totals[0]) / size / steps,
                "seconds_per_step": self.curve[-1][0] / steps, "steps": steps,
                "cpu_seconds_per_step": float(totals[1]) / size / steps, "sent_bytes": int(totals[0]),
                "wire_bytes_per_step": None if math.isnan(wire) else wire,
                "curve": self.curve, "identical_on_all_ranks": all(torch.equal(e, every[0]) for e in every),
                "parameters_sha256": hashlib.sha256(params.numpy().tobytes()).hexdigest(),
                "hook_stats": self.state.stats() if hasattr(self.state, "stats") else None}


def train_seed(hooks: List[str], dataset: str, data, epochs: int, seed: int, meter: ByteMeter,
               wire: WireMeter) -> List[Dict[str, Any]]:
    """Train one model per hook, epoch by epoch in :func:`interleaved` order; their records.

    ``curve`` holds, after each epoch, the slowest rank's cumulative training seconds and the test
    accuracy (evaluation and the per-epoch barrier are not timed). Each model sees the same
    minibatches, and trains the same bits, as it would alone (no model draws random numbers after
    its initialization)."""
    runs = {hook: HookRun(hook, dataset, data, epochs, seed) for hook in hooks}
    for _, hook in interleaved(hooks, epochs):
        runs[hook].epoch(meter, wire)
    return [runs[hook].record() for hook in hooks]


def epochs_of(dataset: str, args) -> int:
    """--epochs for the CNN, --mlp-epochs (else --epochs) for the MLP."""
    return args.epochs if TASKS[dataset]["model"] == "cnn" else args.mlp_epochs or args.epochs


def interleaved(hooks: List[str], epochs: int) -> List[tuple]:
    """(epoch, hook) in the order they run: epoch by epoch, every hook's model one epoch, the hooks'
    order rotated by one at each epoch, so that a machine that slows down or speeds up during the run
    (a shared host) weighs on every hook alike instead of on whichever ran then, and no hook always
    follows the same one."""
    return [(epoch, hooks[(epoch + i) % len(hooks)]) for epoch in range(epochs) for i in range(len(hooks))]


def worker(rank: int, args, init_method: str) -> None:
    """Rank ``rank`` of the job: join the gloo group at ``init_method``, train every hook's model on
    each dataset, seed by seed (:func:`train_seed`); rank 0 writes the records to ``args.worker_out``.
    Ends the process."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=args.ranks)
    from mpiopt.kernels import cpu_kernel, warm_up

    warm_up(cpu_kernel())  # intsgd's quantizer compiled before any timed step, as mpiopt run does
    meter = ByteMeter()
    wire = WireMeter(os.environ.get("GLOO_SOCKET_IFNAME", "lo"), args.ranks)
    records = []
    for dataset in args.datasets:
        data = load_task(dataset, Path(args.libsvm_dir))
        for seed in range(args.seeds):
            for rec in train_seed(args.hooks, dataset, data, epochs_of(dataset, args), seed, meter, wire):
                records.append(rec)
                if rank == 0:
                    print(f"{dataset:7s} {rec['hook']:9s} seed {seed}  acc {rec['test_accuracy']:.4f}  "
                          f"{rec['bytes_per_step']:9.0f} B/step  "
                          f"{wire_text(rec['wire_bytes_per_step']):>9s} wire B/step  "
                          f"{1e3 * rec['seconds_per_step']:.2f} ms/step  "
                          f"{1e3 * rec['cpu_seconds_per_step']:.2f} CPU ms/step",
                          flush=True)
    finish_worker(rank, args.worker_out, records)


def finish_worker(rank: int, out: str, records: Any) -> None:
    """Rank 0 writes ``records`` (JSON) to ``out``; every rank leaves the group together and ends its
    process at once, skipping torch's C++ teardown, which can SIGABRT a finished worker and fail
    the whole spawn."""
    import torch.distributed as dist

    if rank == 0:
        Path(out).write_text(json.dumps(records))
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


# ---------------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------------
class JobError(RuntimeError):
    """The workers failed, ran past --timeout, or their traffic missed the emulated network."""


def aggregate(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One result per (dataset, hook): means over the seeds, the curve's too (epoch by epoch)."""
    groups: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["hook"], r["dataset"]), []).append(r)
    return [{"hook": hook, "dataset": dataset,
             **{key: float(np.mean([r[key] for r in runs])) for key in ("test_accuracy", "bytes_per_step",
                                                                        "seconds_per_step", "cpu_seconds_per_step")},
             "wire_bytes_per_step": mean_or_none([r["wire_bytes_per_step"] for r in runs]),
             "seeds": [r["seed"] for r in runs],
             "curve": np.mean([r["curve"] for r in runs], axis=0).tolist()} for (hook, dataset), runs in groups.items()]


def mean_or_none(values: List[Optional[float]]) -> Optional[float]:
    """The mean, or None when any value is None (a counter that could not be read)."""
    return None if any(v is None for v in values) else float(np.mean(values))


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


def seconds_to(curve: List[List[float]], target: Optional[float]) -> Optional[float]:
    """The first cumulative seconds at which ``curve`` ([seconds, accuracy] per epoch) reaches
    ``target``; None if it never does or there is no target."""
    if target is None:
        return None
    c = np.asarray(curve)
    hit = np.flatnonzero(c[:, 1] >= target)
    return float(c[hit[0], 0]) if hit.size else None


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
        seconds = seconds_to(r["curve"], targets[r["dataset"]])
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
              f"{b['bytes_per_step'] / r['bytes_per_step']:7.2f} {wire_text(r['wire_bytes_per_step']):>9s} "
              f"{1e3 * r['seconds_per_step']:8.2f} "
              f"{1e3 * r['cpu_seconds_per_step']:7.2f} {to}  {vs}")
    print("target test accuracy: " + ", ".join(f"{d} {'none (no allreduce run)' if t is None else f'{100 * t:.2f}%'}"
                                               for d, t in targets.items()))


def wire_text(wire_bytes: Optional[float]) -> str:
    """Wire bytes per step as printed: "-" where the interface's counter could not be read."""
    return "-" if wire_bytes is None else f"{wire_bytes:.0f}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_here(args) -> Dict[str, Any]:
    """--net shm: the ranks as processes spawned here, gloo over TCP loopback."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(args, f"tcp://127.0.0.1:{free_port()}"), nprocs=args.ranks, join=True)
    return {"transport": "gloo over TCP loopback, one machine", "nic_tx_bytes": None}


def worker_options(args, rank: int, init_method: str) -> List[str]:
    """The options that make this script run rank ``rank`` of ``args``'s job (datasets already
    filtered, paths absolute)."""
    opts = ["--worker-rank", str(rank), "--worker-init", init_method, "--worker-out", args.worker_out,
            "--json", args.json, "--ranks", str(args.ranks), "--epochs", str(args.epochs), "--seeds", str(args.seeds),
            "--libsvm-dir", str(args.libsvm_dir.resolve()), "--datasets", *args.datasets, "--hooks", *args.hooks]
    if args.mlp_epochs is not None:
        opts += ["--mlp-epochs", str(args.mlp_epochs)]
    return opts


def run_ranks(cmds: List[List[str]], env: Dict[str, str], timeout: Optional[float]) -> List[Optional[int]]:
    """Run one command per rank, all in one new process group, and wait for them.

    Returns the exit codes once every worker exited 0 or one exited otherwise (those still running
    then read None). Whatever happens -- a failed worker, ``timeout`` seconds passing (JobError), a
    signal that the bed turned into SystemExit -- the whole group is ended before this returns, so
    no worker outlives the job or waits forever for a dead peer."""
    procs = [subprocess.Popen(cmds[0], env=env, preexec_fn=os.setpgrp)]
    try:
        group = procs[0].pid
        procs += [subprocess.Popen(c, env=env, preexec_fn=lambda: os.setpgid(0, group)) for c in cmds[1:]]
        deadline = math.inf if timeout is None else time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in procs]
            if all(c == 0 for c in codes) or any(c not in (None, 0) for c in codes):
                return codes
            if time.monotonic() > deadline:
                raise JobError(f"the workers ran past --timeout {timeout:g} s; all were ended")
            time.sleep(0.1)
    finally:
        netbed.end_group(procs)


def run_on_bed(args, script: Path = Path(__file__),
               options: Callable[[Any, int, str], List[str]] = worker_options) -> Dict[str, Any]:
    """--net 1gbit: build the emulated network (``args.ranks``, ``args.net``), run ``script`` with
    ``options(args, K, init_method)`` as rank K's worker inside namespace K with gloo on the bed's NIC,
    tear the bed down; returns the transport and the bytes the NICs sent."""
    with netbed.NetBed(args.ranks, args.net) as bed:
        init = f"tcp://{bed.address(0)}:{BED_PORT}"
        cmds = [["ip", "netns", "exec", bed.ns(r), sys.executable, str(script.resolve()), *options(args, r, init)]
                for r in range(args.ranks)]
        before = bed.counters()
        codes = run_ranks(cmds, {**os.environ, "GLOO_SOCKET_IFNAME": netbed.NIC}, args.timeout)
        traffic = netbed.nic_traffic(before, bed.counters())
        described = bed.describe()
    failed = [f"rank {r} {'was ended' if c is None else f'exited {c}'}" for r, c in enumerate(codes) if c != 0]
    if failed:
        raise JobError(f"the job failed on the {args.net} bed ({', '.join(failed)}); every worker was ended")
    return {"transport": f"gloo over TCP across netbed's emulated {args.net} network: one namespace per rank, "
                         f"GLOO_SOCKET_IFNAME={netbed.NIC}, rendezvous at {init}",
            "nic_tx_bytes": traffic["nic_tx_bytes"], "nic_bytes": traffic["nic_bytes"],
            "netbed": {k: v for k, v in described.items() if k != "mpi_env"}}


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
    out = Path(args.json).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    args.json = str(out)
    raw = out.with_name(out.stem + "-raw.json")
    raw.unlink(missing_ok=True)
    args.worker_out = str(raw)
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    net = spawn_here(args) if args.net == "shm" else run_on_bed(args)
    records = json.loads(raw.read_text())
    raw.unlink()
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
              "intsgd_stats": [r["hook_stats"] for r in records if r["hook"] == "intsgd"],
              "wall_seconds": round(time.perf_counter() - t0, 1)}
    out.write_text(json.dumps({**header, "results": results}, indent=1))
    print_table(results, targets)
    if net["nic_tx_bytes"] is not None:
        print(f"{net['nic_tx_bytes']:.0f} bytes crossed the bed's NICs; the hooks handed {hook_bytes:.0f} to gloo")
        if net["nic_tx_bytes"] < hook_bytes:
            raise JobError(f"fewer bytes crossed the bed's NICs than the hooks sent: gloo bypassed the shaped links "
                           f"(results in {out} are not from the emulated network)")


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
    p.add_argument("--net", choices=("shm", "1gbit"), default="shm")
    p.add_argument("--libsvm-dir", type=Path, default=HERE.parent.parent / "shared" / "data" / "libsvm")
    p.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    p.add_argument("--hooks", nargs="+", choices=HOOKS, default=list(HOOKS))
    p.add_argument("--target-accuracy", type=fraction, default=None,
                   help="test accuracy (fraction) for seconds_to_accuracy; default: per dataset, the allreduce "
                        f"hook's final seed-mean accuracy - {TARGET_MARGIN}")
    p.add_argument("--timeout", type=float, default=None,
                   help="--net 1gbit: seconds the workers may take before all are ended (default: no limit)")
    p.add_argument("--worker-rank", type=int, default=None, help=argparse.SUPPRESS)  # set by run_on_bed
    p.add_argument("--worker-init", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_rank is not None:
        worker(args.worker_rank, args, args.worker_init)
    try:
        drive(args)
    except netbed.NetBedError as e:
        print(f"netbed: {e}", file=sys.stderr)
        return 2
    except JobError as e:
        print(f"ddp_hooks: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
