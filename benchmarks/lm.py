"""A character-level language model trained under DDP with each hook: does intsgd reach fp32's
validation perplexity sooner, on a network where the gradient exchange binds?

The model is a small GPT (pre-LayerNorm decoder, causal self-attention, ``MODEL``: 7 layers of width
256, 4 heads, a context of 64 characters, 5.6 M parameters) trained on a text split as its NOTES.md
says for Tiny Shakespeare (``../shared/data/text/tinyshakespeare.txt``): the first 90 % of the
characters train, the last 10 % validate (``--text`` takes any UTF-8 file, split the same way; the
vocabulary is its distinct characters). Rank K trains on the K-th of R contiguous slices of the
training characters (heterogeneous shards, as the convex runs split rows), ``BATCH`` random windows
per step, the same windows for every hook. AdamW (lr ``--lr``, 5 % linear warm-up then cosine decay
to a tenth), under DistributedDataParallel with ``bucket_cap_mb=BUCKET_CAP_MB`` so the gradient
travels in ``buckets`` (>= 8) as a large model's does. The hooks: ``allreduce`` (fp32, what DDP does
without a hook), torch's ``fp16`` and ``bf16``, torch's ``powersgd`` (rank 4, as the IntSGD paper's
LSTM runs) and mpiopt's overlapped ``intsgd`` (``--buckets-per-message`` DDP buckets a message, default 4: an int8
message as large as one fp32 bucket; the hook's default alpha, which under AdamW is
``'exponent'``: the largest |g| over the ranks fills int8 in each layer at every step; when named,
``intsgd-paper``: the same hook with the IntSGD paper's Alg. 2, and ``intsgd-exponent``, the exponent
rule named), each over its own model, side by side as
``ddp_hooks.py`` does: the models take turns, ``--steps / --evals`` steps each, the order rotated at
each turn (a machine that drifts weighs on every hook alike); after each turn the model's
validation loss is measured on ``EVAL_WINDOWS`` fixed windows (not timed).

The model is sized so the link binds: before training, a probe times the step's compute
(``compute_seconds_per_step``: forward, backward and AdamW under ``no_sync``, no gradient exchange,
every rank at once as in training) and fp32's all-reduce alone (``allreduce_seconds_per_step``: the
DDP buckets' fp32 sums back to back); on the 1 Gbit/s bed the second is the larger, which is where a
GPU cluster at 10-100 Gbit/s stands with a large model.

    python benchmarks/lm.py --ranks 4 --net shm --hooks allreduce fp16 bf16 powersgd intsgd intsgd-paper \\
        --seeds 1 --json benchmarks/results/lm_shm.json
    sudo .venv/bin/python benchmarks/lm.py --ranks 4 --net 1gbit --hooks allreduce fp16 bf16 powersgd intsgd \\
        intsgd-paper --seeds 1 --json benchmarks/results/lm_1gbit.json                # and --net 10gbit
    sudo .venv/bin/python benchmarks/lm.py --ranks 4 --net 1gbit --hooks allreduce fp16 intsgd --seeds 1 \\
        --json benchmarks/results/lm_1gbit_3hooks.json
    python benchmarks/lm.py --figure benchmarks/results/lm.png benchmarks/results/lm_shm.json \\
        benchmarks/results/lm_10gbit.json benchmarks/results/lm_1gbit.json

writes OUT ``{"results": [{"hook", "net", "val_loss", "val_perplexity", "seconds_to_target", "steps",
"bytes_per_step", "wire_bytes_per_step", "seconds_per_step", "compute_seconds_per_step", "seeds",
...}, ...]}`` plus a header of the settings and the probe. ``val_loss`` / ``val_perplexity``: the final
model's, mean over seeds; the target is the ``allreduce`` hook's final validation perplexity x
``TARGET_FACTOR`` (1.02), and ``seconds_to_target`` the first cumulative training seconds (slowest
rank, evaluation excluded) at which the seed-mean validation perplexity curve (``curve``:
``[seconds, perplexity, steps]`` after each turn) reaches it, null if never. Bytes are measured as in
``ddp_hooks.py`` (``bytes_per_step``: what the hook handed to the collectives; ``wire_bytes_per_step``:
what the NIC sent). ``--figure PNG JSON...`` draws validation perplexity against seconds, one panel
per JSON (network), and prints their markdown table. ``--net 10gbit|1gbit`` runs one rank per
namespace of ``netbed.py``'s emulated network (root and ``tc``; else netbed's one-line reason, exit 2).
"""

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from ddp_harness import (DEFAULT_HOOKS, HOOKS, MARKERS, ByteMeter, Tally, WireMeter,  # noqa: E402
                         add_worker_options, check_bed_bytes, exit_code, finish_worker, join_gloo, make_hook, number,
                         positive, replica_check, run_job, seconds_to, seed_means, side_by_side, slowest,
                         worker_options)

from mpiopt.errors import InputError  # noqa: E402

MODEL = {"width": 256, "layers": 7, "heads": 4, "context": 64}
BATCH = 4
"""Windows of ``context`` characters per rank per step."""
BUCKET_CAP_MB = 2.0
"""DDP's bucket size: the 22 MB of fp32 gradient travel in about 11 buckets."""
INTSGD_BUCKETS_PER_MESSAGE = 4
"""DDP buckets the intsgd hooks send as one message: 4 buckets of int8 are one fp32 bucket's bytes, the
message size bucket_cap_mb sets for the float hooks (one bucket each), with a quarter of the round trips."""
POWERSGD_RANK = 4
WARMUP = 0.05
EVAL_WINDOWS = 192
"""Fixed validation windows (spread evenly over the validation text, shared out among the ranks)."""
EVAL_BATCH = 32
PROBE_STEPS = 8
TARGET_FACTOR = 1.02
TRAIN_SHARE = 0.9
NETS = ("shm", "10gbit", "1gbit")
DEFAULT_TEXT = HERE.parent.parent / "shared" / "data" / "text" / "tinyshakespeare.txt"


# ---------------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------------
def split_text(path: Path) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """(training ids, validation ids, vocabulary) of a UTF-8 text file: the first TRAIN_SHARE of its
    characters train, the rest validate; ids index the sorted distinct characters (uint8 when they
    fit, else int32). Raises InputError naming the file when it cannot be read as UTF-8 or is too
    short for a validation window."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise InputError(f"{path}: cannot read the text: {e.strerror}") from None
    except UnicodeDecodeError as e:
        line = Path(path).read_bytes()[: e.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    cut = int(TRAIN_SHARE * len(text))
    if len(text) - cut < MODEL["context"] + 1:
        raise InputError(f"{path}: {len(text)} characters; the last {1 - TRAIN_SHARE:.0%} must hold a validation "
                         f"window of {MODEL['context'] + 1}")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point per character
    distinct = np.unique(codes)
    ids = np.searchsorted(distinct, codes).astype(np.uint8 if distinct.size <= 256 else np.int32)
    return ids[:cut], ids[cut:], [chr(c) for c in distinct.tolist()]


def rank_slice(ids: np.ndarray, rank: int, ranks: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of the training characters."""
    bounds = np.linspace(0, len(ids), ranks + 1).astype(np.int64)
    return ids[bounds[rank]:bounds[rank + 1]]


def windows(ids: np.ndarray, starts: np.ndarray, length: int):
    """(inputs, next-character targets) of the windows starting at ``starts``, as int64 tensors."""
    import torch

    rows = torch.from_numpy(ids[starts[:, None] + np.arange(length + 1)].astype(np.int64))
    return rows[:, :-1], rows[:, 1:]


def make_gpt(vocab: int):
    """A pre-LayerNorm GPT of MODEL's size over ``vocab`` characters (learned positions, no dropout)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    width, heads, context = MODEL["width"], MODEL["heads"], MODEL["context"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
            self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
            self.fc, self.out = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(att.transpose(1, 2).reshape(b, t, width))
            return x + self.out(F.gelu(self.fc(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(vocab, width)
            self.position = nn.Parameter(0.02 * torch.randn(context, width))
            self.blocks = nn.Sequential(*[Block() for _ in range(MODEL["layers"])])
            self.ln, self.head = nn.LayerNorm(width), nn.Linear(width, vocab)

        def forward(self, idx):
            return self.head(self.ln(self.blocks(self.embed(idx) + self.position[: idx.shape[1]])))

    return GPT()


def warmup_cosine(steps: int) -> Callable[[int], float]:
    """The lr factor at each step: linear warm-up over WARMUP of the steps, then cosine to 0.1."""
    warm = max(1, int(WARMUP * steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        done = min(1.0, (step - warm) / max(1, steps - warm))
        return 0.1 + 0.45 * (1 + math.cos(math.pi * done))

    return factor


# ---------------------------------------------------------------------------------------------------
# worker side (one process per rank)
# ---------------------------------------------------------------------------------------------------
class Validation:
    """The validation loss of a model on EVAL_WINDOWS fixed windows, this rank's share of them
    evaluated here and the sums all-reduced (the same on every rank)."""

    def __init__(self, val: np.ndarray, rank: int, ranks: int):
        starts = np.linspace(0, len(val) - MODEL["context"] - 1, EVAL_WINDOWS).astype(np.int64)
        self.batches = [windows(val, part, MODEL["context"]) for part in np.array_split(starts[rank::ranks],
                        max(1, math.ceil(len(starts[rank::ranks]) / EVAL_BATCH)))]

    def loss(self, model) -> float:
        import torch
        import torch.distributed as dist
        from torch.nn import functional as F

        total = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            for x, y in self.batches:
                logits = model(x)
                total[0] += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"))
                total[1] += y.numel()
        dist.all_reduce(total)
        return float(total[0] / total[1])


def counting(hook: Callable, buckets: Dict[int, int]) -> Callable:
    """``hook``, noting each bucket's index and size (elements) as DDP hands it over."""
    def counted(state, bucket):
        buckets[bucket.index()] = bucket.buffer().numel()
        return hook(state, bucket)

    return counted


class LMRun:
    """One model under DDP with one hook, trained a turn at a time (see :func:`train_seed`)."""

    def __init__(self, hook_name: str, seed: int, shard: np.ndarray, vocab: int, args):
        import torch
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        self.hook_name, self.seed, self.shard = hook_name, seed, shard
        torch.manual_seed(seed)
        self.ddp = DistributedDataParallel(make_gpt(vocab), bucket_cap_mb=BUCKET_CAP_MB)
        self.opt = torch.optim.AdamW(self.ddp.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, warmup_cosine(args.steps))
        self.state, hook = make_hook(hook_name, self.opt, seed, powersgd_rank=POWERSGD_RANK,
                                     buckets_per_message=args.buckets_per_message)
        self.buckets: Dict[int, int] = {}
        self.ddp.register_comm_hook(self.state, counting(hook, self.buckets))
        self.rng = np.random.default_rng([seed, dist.get_rank()])
        self.tally, self.curve, self.steps = Tally(), [], 0

    def step(self, starts: np.ndarray) -> None:
        from torch.nn import functional as F

        x, y = windows(self.shard, starts, MODEL["context"])
        self.opt.zero_grad(set_to_none=True)
        logits = self.ddp(x)
        F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).backward()
        self.opt.step()
        self.sched.step()

    def turn(self, steps: int, meter: ByteMeter, wire: WireMeter, validation: Validation) -> None:
        """``steps`` timed steps (after a barrier), then the validation loss (not timed)."""
        starts = self.rng.integers(0, len(self.shard) - MODEL["context"] - 1, size=(steps, BATCH))
        with self.tally.timed(meter, wire):
            for s in range(steps):
                self.step(starts[s])
        self.steps += steps
        self.curve.append([slowest(self.tally.seconds), math.exp(validation.loss(self.ddp.module)), self.steps])

    def record(self) -> Dict[str, Any]:
        """The run's record (the same on every rank)."""
        return {"hook": self.hook_name, "seed": self.seed, "val_loss": math.log(self.curve[-1][1]),
                "val_perplexity": self.curve[-1][1], "steps": self.steps, **self.tally.per_step(self.steps),
                "seconds_per_step": self.curve[-1][0] / self.steps, "curve": self.curve,
                "buckets": len(self.buckets), **replica_check(self.ddp),
                "hook_stats": self.state.stats() if hasattr(self.state, "stats") else None,
                "larger_sums": getattr(getattr(self.state, "comm", None), "larger_algorithms", None)}


def probe(shard: np.ndarray, vocab: int, args) -> Dict[str, Any]:
    """The step's compute alone and fp32's all-reduce alone, per step (slowest rank; see the module
    docstring), on a model of the benchmark's size and bucketing."""
    import torch
    import torch.distributed as dist

    run = LMRun("allreduce", 0, shard, vocab, args)
    starts = run.rng.integers(0, len(shard) - MODEL["context"] - 1, size=(2 * PROBE_STEPS + 2, BATCH))
    for s in range(2):  # DDP rebuilds its buckets after the first step
        run.step(starts[s])
    dist.barrier()
    t0 = time.perf_counter()
    with run.ddp.no_sync():
        for s in range(PROBE_STEPS):
            run.step(starts[2 + s])
    compute = slowest((time.perf_counter() - t0) / PROBE_STEPS)
    buffers = [torch.ones(n) for _, n in sorted(run.buckets.items())]
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(PROBE_STEPS):
        for work in [dist.all_reduce(b, async_op=True) for b in buffers]:
            work.wait()
    allreduce = slowest((time.perf_counter() - t0) / PROBE_STEPS)
    return {"compute_seconds_per_step": compute, "allreduce_seconds_per_step": allreduce,
            "allreduce_over_compute": allreduce / compute, "buckets": len(buffers),
            "bucket_elements": [b.numel() for b in buffers],
            "parameters": sum(p.numel() for p in run.ddp.parameters())}


def train_seed(hooks: List[str], seed: int, shard: np.ndarray, vocab: int, validation: Validation, args,
               meter: ByteMeter, wire: WireMeter) -> List[Dict[str, Any]]:
    """Train one model per hook, turn by turn (:func:`ddp_harness.side_by_side`); their records. Each
    model sees the same windows, and trains the same bits, as it would alone."""
    bounds = np.linspace(0, args.steps, args.evals + 1).astype(int)
    return side_by_side(hooks, args.evals, lambda hook: LMRun(hook, seed, shard, vocab, args),
                        lambda run, turn: run.turn(int(bounds[turn + 1] - bounds[turn]), meter, wire, validation))


def worker(rank: int, args, init_method: str) -> None:
    """Rank ``rank``: join the gloo group, probe, train every hook's model seed by seed; rank 0 hands
    the records (and the probe) to ``args.worker_out``. Ends the process."""
    import torch.distributed as dist

    join_gloo(rank, args.ranks, init_method)
    train, val, vocab = split_text(args.text)
    shard = rank_slice(train, rank, dist.get_world_size())
    validation = Validation(val, rank, args.ranks)
    measured = probe(shard, len(vocab), args)
    if rank == 0:
        print(f"probe: compute {1e3 * measured['compute_seconds_per_step']:.1f} ms/step, fp32 all-reduce "
              f"{1e3 * measured['allreduce_seconds_per_step']:.1f} ms/step ({measured['buckets']} buckets, "
              f"{measured['parameters']} parameters)", flush=True)
    meter, wire = ByteMeter(), WireMeter(args.ranks)
    records = []
    for seed in range(args.seeds):
        for rec in train_seed(args.hooks, seed, shard, len(vocab), validation, args, meter, wire):
            records.append(rec)
            if rank == 0:
                print(f"{rec['hook']:9s} seed {seed}  val ppl {rec['val_perplexity']:.3f}  "
                      f"{rec['bytes_per_step']:10.0f} B/step  {1e3 * rec['seconds_per_step']:.1f} ms/step", flush=True)
    finish_worker(rank, args.worker_out, {"probe": measured, "records": records})


# ---------------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------------
def aggregate(records: List[Dict[str, Any]], net: str, compute: float) -> List[Dict[str, Any]]:
    """One result per hook: means over the seeds (the curve's too, turn by turn), then the target
    (allreduce's final perplexity x TARGET_FACTOR) and the seconds to it."""
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r["hook"], []).append(r)
    results = [{"hook": hook, "net": net,
                **seed_means(runs, ("val_loss", "val_perplexity", "bytes_per_step", "seconds_per_step",
                                    "cpu_seconds_per_step")),
                "steps": runs[0]["steps"], "compute_seconds_per_step": compute, "buckets": runs[0]["buckets"]}
               for hook, runs in groups.items()]
    base = next((r for r in results if r["hook"] == "allreduce"), None)
    target = None if base is None else base["val_perplexity"] * TARGET_FACTOR
    for r in results:
        seconds = None if target is None else seconds_to(r["curve"], lambda ppl: ppl <= target)
        r.update(target_perplexity=target, seconds_to_target=seconds)
    return results


def print_table(results: List[Dict[str, Any]], probed: Dict[str, Any]) -> None:
    """Perplexity, bytes, time per step and seconds to the target, against fp32 and fp16."""
    by = {r["hook"]: r for r in results}
    print(f"{'hook':9s} {'val ppl':>8s} {'vs fp32':>8s} {'B/step':>10s} {'wire B':>10s} {'ms/step':>8s} "
          f"{'s to tgt':>8s} {'t/fp32':>8s} {'t/fp16':>8s}")
    for r in results:
        change = 100 * (r["val_perplexity"] / by.get("allreduce", r)["val_perplexity"] - 1)
        print(f"{r['hook']:9s} {r['val_perplexity']:8.3f} {change:+7.2f}% {r['bytes_per_step']:10.0f} "
              f"{number(r['wire_bytes_per_step'], '.0f'):>10s} {1e3 * r['seconds_per_step']:8.1f} "
              f"{number(r['seconds_to_target'], '.1f', 'never'):>8s} "
              f"{ratio(r, by.get('allreduce')):>8s} {ratio(r, by.get('fp16')):>8s}")
    print(f"target perplexity {number(results[0]['target_perplexity'], '.3f', 'none (no allreduce run)')}; "
          f"probe: compute {1e3 * probed['compute_seconds_per_step']:.1f} ms/step, fp32 all-reduce "
          f"{1e3 * probed['allreduce_seconds_per_step']:.1f} ms/step ({probed['allreduce_over_compute']:.2f}x)")


def ratio(result: Dict[str, Any], base: Optional[Dict[str, Any]]) -> str:
    """``result``'s seconds to target over ``base``'s, as printed ("-" where either never got there)."""
    if base is None or result["seconds_to_target"] is None or base["seconds_to_target"] is None:
        return "-"
    return f"{result['seconds_to_target'] / base['seconds_to_target']:.2f}x"


def plot(reports: List[Dict[str, Any]], out: Path) -> None:
    """Validation perplexity against cumulative training seconds, one panel per report (network),
    one line per hook, the target dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(reports), figsize=(5.5 * len(reports), 4.2), squeeze=False)
    for ax, report in zip(axes[0], reports):
        for r in report["results"]:
            curve = np.asarray(r["curve"])
            ax.plot(curve[:, 0], curve[:, 1], marker=MARKERS[HOOKS.index(r["hook"])], ms=4, label=r["hook"], alpha=0.8)
        target = report["results"][0]["target_perplexity"]
        if target is not None:
            ax.axhline(target, color="gray", ls="--", lw=1, label="target (fp32 x 1.02)")
        ax.set(xlabel="cumulative training seconds (slowest rank)", ylabel="validation perplexity (log scale)",
               title=f"{report['net']}, {report['ranks']} ranks", yscale="log")
        ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def markdown(reports: List[Dict[str, Any]]) -> str:
    """The README's table of runs on several networks: per network and hook, the final validation
    perplexity (and its change against fp32's), bytes per step, seconds per step, seconds to the target
    and their ratios to fp32's and fp16's; then each network's probe."""
    lines = ["| net | hook | val perplexity | vs fp32 | bytes per step | wire bytes per step | s per step | "
             "s to target | time / fp32's | time / fp16's |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for report in reports:
        by = {r["hook"]: r for r in report["results"]}
        for r in report["results"]:
            change = 100 * (r["val_perplexity"] / by.get("allreduce", r)["val_perplexity"] - 1)
            lines.append(f"| {report['net']} | {r['hook']} | {r['val_perplexity']:.3f} | {change:+.2f} % | "
                         f"{r['bytes_per_step']:,.0f} | {number(r['wire_bytes_per_step'], ',.0f')} | "
                         f"{r['seconds_per_step']:.3f} | {number(r['seconds_to_target'], '.1f', 'never')} | "
                         f"{ratio(r, by.get('allreduce'))} | {ratio(r, by.get('fp16'))} |")
    lines.append("")
    for report in reports:
        probed = report["probe"]
        lines.append(f"- {report['net']}: compute {1e3 * probed['compute_seconds_per_step']:.1f} ms per step, fp32 "
                     f"all-reduce alone {1e3 * probed['allreduce_seconds_per_step']:.1f} ms "
                     f"({probed['allreduce_over_compute']:.2f}x the compute); target perplexity "
                     f"{number(report['results'][0]['target_perplexity'], '.3f')}; {report['wall_seconds']:.0f} s "
                     f"for the run")
    return "\n".join(lines)


def bed_options(args, rank: int, init_method: str) -> List[str]:
    """The options that make this script run rank ``rank`` of ``args``'s job (paths absolute)."""
    return ["--json", args.json, "--ranks", str(args.ranks), "--net", args.net, "--hooks", *args.hooks,
            "--seeds", str(args.seeds), "--steps", str(args.steps), "--evals", str(args.evals), "--lr", str(args.lr),
            "--buckets-per-message", str(args.buckets_per_message), "--text", str(Path(args.text).resolve()),
            *worker_options(args, rank, init_method)]


def drive(args) -> None:
    """Run the job on the asked network, then write the JSON and the figure and print the table."""
    args.hooks = list(dict.fromkeys(args.hooks))  # a hook named twice is one model
    split_text(args.text)  # a bad text stops here, before any rank starts
    t0 = time.perf_counter()
    handed, net = run_job(args, Path(__file__), worker, bed_options)
    out = Path(args.json)
    records, probed = handed["records"], handed["probe"]
    results = aggregate(records, args.net, probed["compute_seconds_per_step"])
    hook_bytes = sum(r["sent_bytes"] for r in records)
    report = {"ranks": args.ranks, "net": args.net, **net, "hook_bytes": hook_bytes, "model": MODEL,
              "batch_per_rank": BATCH, "bucket_cap_mb": BUCKET_CAP_MB,
              "intsgd_buckets_per_message": args.buckets_per_message, "optimizer": f"AdamW lr {args.lr}, betas "
              f"(0.9, 0.95), weight decay 0.1, {WARMUP:.0%} warm-up, cosine to 0.1", "powersgd_rank": POWERSGD_RANK,
              "text": str(args.text), "text_sha256": hashlib.sha256(Path(args.text).read_bytes()).hexdigest(),
              "split": f"first {TRAIN_SHARE:.0%} of the characters train, the rest validate",
              "eval_windows": EVAL_WINDOWS, "probe": probed, "target_rule": f"allreduce's final val_perplexity x "
              f"{TARGET_FACTOR}", "identical_on_all_ranks": all(r["identical_on_all_ranks"] for r in records),
              "final_parameters_sha256": {f"{r['hook']}/seed{r['seed']}": r["parameters_sha256"] for r in records},
              "intsgd_stats": [{"hook": r["hook"], **r["hook_stats"], "larger_sums": r["larger_sums"]}
                               for r in records if r["hook"].startswith("intsgd")],
              "wall_seconds": round(time.perf_counter() - t0, 1), "results": results}
    out.write_text(json.dumps(report, indent=1))
    plot([report], out.with_suffix(".png"))
    print_table(results, probed)
    check_bed_bytes(net, hook_bytes, out)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=positive, default=4)
    p.add_argument("--net", choices=NETS, default="shm")
    p.add_argument("--hooks", nargs="+", choices=HOOKS, default=list(DEFAULT_HOOKS))
    p.add_argument("--seeds", type=positive, default=1)
    p.add_argument("--json", help="output JSON (the figure goes next to it, .png)")
    p.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="UTF-8 text (default: Tiny Shakespeare)")
    p.add_argument("--steps", type=positive, default=400, help="training steps per hook")
    p.add_argument("--evals", type=positive, default=10, help="turns per hook, each ending with a validation")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW's peak learning rate")
    p.add_argument("--buckets-per-message", type=positive, default=INTSGD_BUCKETS_PER_MESSAGE,
                   help="DDP buckets the intsgd hooks exchange as one message (default: an int8 message holds "
                        "one fp32 bucket's bytes)")
    p.add_argument("--timeout", type=float, default=None,
                   help="on the bed: seconds the workers may take before all are ended (default: no limit)")
    p.add_argument("--figure", nargs="+", metavar=("PNG", "JSON"),
                   help="draw PNG from the JSONs of earlier runs (one panel each) and print their markdown table, "
                        "instead of running")
    add_worker_options(p)
    args = p.parse_args(argv)
    if args.figure:
        if len(args.figure) < 2:
            p.error("--figure takes the PNG, then one or more JSONs")
        reports = [json.loads(Path(j).read_text()) for j in args.figure[1:]]
        plot(reports, Path(args.figure[0]))
        print(markdown(reports))
        return 0
    if args.json is None:
        p.error("--json is required (unless --figure)")
    if args.evals > args.steps:
        p.error(f"--evals {args.evals} > --steps {args.steps}: every turn needs a step")
    if args.worker_rank is not None:
        worker(args.worker_rank, args, args.worker_init)
    if not Path(args.text).is_file():
        print(f"lm.py: no text at {args.text} (give --text PATH)", file=sys.stderr)
        return 2
    return exit_code(drive, args, "lm.py", (InputError,))


if __name__ == "__main__":
    sys.exit(main())
