"""What the DDP benchmarks share: the hooks compared, the meters, the timed phases, the launch on this
machine or across netbed's emulated network, and the rank-0 hand-off of the records.

A benchmark (``ddp_hooks.py``, ``lm.py``) is then its models, its training round and its table:

- worker side: :func:`join_gloo` (one gloo rank, quantizer warmed), :func:`make_hook` (the hooks by
  name; :class:`InOrder` chains PowerSGD's buckets), :class:`ByteMeter` / :class:`WireMeter` (bytes
  handed to the collectives / sent by the NIC),
  :class:`Tally` (a run's timed phases: wall, CPU, bytes), :func:`replica_check`, :func:`slowest`,
  :func:`side_by_side` (one model per hook, trained in :func:`interleaved` turns), :func:`finish_worker`;
- driver side: :func:`run_job` (``--net shm``: processes spawned here, gloo over TCP loopback;
  ``--net 1gbit|10gbit``: one rank per namespace of the bed, gloo on its NIC), built on
  :func:`run_ranks` (one process group, all ended when one fails) and :func:`in_namespace`;
  :func:`check_bed_bytes`, :func:`exit_code`, :func:`seed_means`, :func:`seconds_to`, :func:`mean_or_none`,
  :func:`number`, :func:`positive`, :class:`JobError`.

The worker options a script passes to its ranks on the bed end with the three hidden ones of
:func:`add_worker_options`; :func:`worker_options` writes them.
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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import netbed  # noqa: E402

DEFAULT_HOOKS = ("allreduce", "fp16", "bf16", "powersgd", "intsgd")
HOOKS = DEFAULT_HOOKS + ("intsgd-exponent", "intsgd-paper")
"""Hook names: the defaults, and intsgd with a named alpha rule: ``'exponent'`` (the largest |g| fills
int8 at every step) or ``'paper'`` (Alg. 2); ``intsgd`` is the hook's default, which follows the
optimizer (``mpiopt.torch.hooks.default_alpha``: the paper's under SGD, exponent under AdamW)."""
INTSGD_ALPHA = {"intsgd": None, "intsgd-exponent": "exponent", "intsgd-paper": "paper"}
"""The alpha rule of each IntSGD hook name (None: the hook's default)."""
MARKERS = ("o", "s", "D", "^", "*", "v", "P")
GATHERS = ("all_gather_single", "allgather", "_allgather_base")
"""The process groups' all-gather methods; ``all_gather_single`` exists from torch 2.13 (before it,
``all_gather_into_tensor`` ends in ``_allgather_base``)."""
BED_PORT = 29500
"""gloo's rendezvous port at rank 0's bed address (a fresh namespace: nothing else listens there)."""
SINGLE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------------
# worker side (one process per rank)
# ---------------------------------------------------------------------------------------------------
def join_gloo(rank: int, ranks: int, init_method: str) -> None:
    """Join the job's gloo group as ``rank`` with one compute thread, and compile intsgd's quantizer
    before any timed step (as ``mpiopt run`` does)."""
    import torch
    import torch.distributed as dist

    from mpiopt.kernels import cpu_kernel, warm_up

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=ranks)
    warm_up(cpu_kernel())


class ByteMeter:
    """Counts the bytes this rank hands to the process groups' all-reduce / all-gather while on.

    Every torch.distributed collective ends in a method of ``torch.distributed.ProcessGroup``
    (``dist.all_reduce`` calls ``allreduce``, ``dist.all_gather_single`` and
    ``all_gather_into_tensor`` call ``all_gather_single``, or ``_allgather_base`` before torch 2.13,
    ``dist.all_gather`` calls ``allgather``),
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
            if hasattr(group, name):  # all_gather_single: torch >= 2.13
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

    def __init__(self, ranks: int, interface: Optional[str] = None):
        interface = interface or os.environ.get("GLOO_SOCKET_IFNAME", "lo")
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


def make_hook(name: str, opt, seed: int, powersgd_rank: int = 2, buckets_per_message: int = 1):
    """(state, hook) of one hook name (see HOOKS); the IntSGD hooks exchange ``buckets_per_message``
    DDP buckets as one message (:mod:`mpiopt.torch.messages`)."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    from mpiopt.torch.hooks import IntSGDState, intsgd_hook

    if name in INTSGD_ALPHA:
        rule = {} if INTSGD_ALPHA[name] is None else {"alpha": INTSGD_ALPHA[name]}
        return IntSGDState(None, opt, wire_dtype="auto", seed=seed, buckets_per_message=buckets_per_message,
                           **rule), intsgd_hook
    if name == "powersgd":
        return powerSGD_hook.PowerSGDState(None, matrix_approximation_rank=powersgd_rank, start_powerSGD_iter=2,
                                           random_seed=seed), InOrder(powerSGD_hook.powerSGD_hook)
    if name == "bf16":
        return None, bf16_on_cpu
    hook = {"allreduce": default_hooks.allreduce_hook, "fp16": default_hooks.fp16_compress_hook}[name]
    return None, hook


class InOrder:
    """A DDP hook whose buckets start their collectives one after the other: bucket k's hook is called
    once bucket k - 1's future has completed (at once when it has), and the returned future completes
    with the hook's own. Autograd is not held: the chain runs on the futures' callbacks.

    torch's PowerSGD hook issues a bucket's later all-reduces (Q after P) from ``.then`` callbacks; on
    CUDA those run as the work is enqueued, but gloo completes futures on its own threads, so with
    several buckets the ranks can issue the collectives of two buckets in different orders, which gloo
    cannot match ("Received data size doesn't match expected size", measured here with 11 buckets).
    Chained, every rank issues them in bucket order."""

    def __init__(self, hook: Callable):
        self.hook, self.last = hook, None

    def __call__(self, state, bucket):
        import torch

        done = torch.futures.Future()

        def finish(fut) -> None:
            try:
                done.set_result(fut.value())
            except Exception as e:  # the hook's error reaches DDP through the future it waits on
                done.set_exception(e)

        def start(_=None) -> None:
            try:
                self.hook(state, bucket).then(finish)
            except Exception as e:
                done.set_exception(e)

        last, self.last = self.last, done
        if last is None or last.done():
            start()
        else:
            last.then(start)
        return done


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


class Tally:
    """What one run's timed phases add up to on this rank: wall and CPU seconds (all its threads),
    the bytes it handed to the collectives (ByteMeter) and the bytes its NIC sent (WireMeter; None
    once a read failed)."""

    def __init__(self):
        self.seconds, self.cpu, self.sent = 0.0, 0.0, 0
        self.wire: Optional[float] = 0.0

    @contextmanager
    def timed(self, meter: ByteMeter, wire: WireMeter) -> Iterator[None]:
        """Time the block, which starts after a barrier (every rank starts the phase together)."""
        import torch.distributed as dist

        dist.barrier()
        meter.bytes = 0
        w0 = wire.read()
        t0, c0 = time.perf_counter(), time.process_time()
        meter.on = True
        try:
            yield
        finally:
            meter.on = False
        self.seconds += time.perf_counter() - t0
        self.cpu += time.process_time() - c0
        w1 = wire.read()
        self.wire = None if None in (w0, w1, self.wire) else self.wire + w1 - w0
        self.sent += meter.bytes

    def per_step(self, steps: int) -> Dict[str, Any]:
        """The mean over ranks of the bytes and CPU seconds per step, and the bytes all ranks handed
        to the collectives (``sent_bytes``); the same on every rank."""
        import torch
        import torch.distributed as dist

        size = dist.get_world_size()
        totals = torch.tensor([self.sent, self.cpu, math.nan if self.wire is None else self.wire], dtype=torch.float64)
        dist.all_reduce(totals)
        wire = float(totals[2]) / size / steps
        return {"bytes_per_step": float(totals[0]) / size / steps, "cpu_seconds_per_step": float(totals[1]) / size / steps,
                "wire_bytes_per_step": None if math.isnan(wire) else wire, "sent_bytes": int(totals[0])}


def replica_check(module) -> Dict[str, Any]:
    """Whether every rank holds the same parameters, and their SHA-256 (this rank's)."""
    import torch
    import torch.distributed as dist

    params = torch.cat([p.detach().reshape(-1) for p in module.parameters()])
    every = [torch.empty_like(params) for _ in range(dist.get_world_size())]
    dist.all_gather(every, params)
    return {"identical_on_all_ranks": all(torch.equal(e, every[0]) for e in every),
            "parameters_sha256": hashlib.sha256(params.numpy().tobytes()).hexdigest()}


def interleaved(hooks: List[str], rounds: int) -> List[tuple]:
    """(round, hook) in the order they run: round by round, every hook's model one round, the hooks'
    order rotated by one at each round, so that a machine that slows down or speeds up during the run
    (a shared host) weighs on every hook alike instead of on whichever ran then, and no hook always
    follows the same one."""
    return [(r, hooks[(r + i) % len(hooks)]) for r in range(rounds) for i in range(len(hooks))]


def side_by_side(hooks: List[str], rounds: int, make_run: Callable[[str], Any],
                 play: Callable[[Any, int], None]) -> List[Dict[str, Any]]:
    """Train one model per hook side by side: ``make_run(hook)`` builds each (all before any trains),
    ``play(run, round)`` trains one for one round, in :func:`interleaved` order; returns each run's
    ``record()``, in the hooks' order. A run that draws no random numbers after it is built trains
    the same bits as it would alone."""
    runs = {hook: make_run(hook) for hook in hooks}
    for r, hook in interleaved(hooks, rounds):
        play(runs[hook], r)
    return [runs[hook].record() for hook in hooks]


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


def add_worker_options(p: argparse.ArgumentParser) -> None:
    """The hidden options a rank on the bed is started with (see :func:`worker_options`)."""
    p.add_argument("--worker-rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-init", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)


def positive(text: str) -> int:
    """An integer >= 1 (argparse type)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def worker_options(args, rank: int, init_method: str) -> List[str]:
    """The hidden options that make a script's process rank ``rank`` of ``args``'s job."""
    return ["--worker-rank", str(rank), "--worker-init", init_method, "--worker-out", args.worker_out]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(cmds: List[List[str]], env: Union[Dict[str, str], List[Dict[str, str]]],
              timeout: Optional[float]) -> List[Optional[int]]:
    """Run one command per rank (with ``env``, or ``env[K]`` for rank K), all in one new process group,
    and wait for them.

    Returns the exit codes once every worker exited 0 or one exited otherwise (those still running
    then read None). Whatever happens -- a failed worker, ``timeout`` seconds passing (JobError), a
    signal that the bed turned into SystemExit -- the whole group is ended before this returns, so
    no worker outlives the job or waits forever for a dead peer."""
    envs = env if isinstance(env, list) else [env] * len(cmds)
    procs = [subprocess.Popen(cmds[0], env=envs[0], preexec_fn=os.setpgrp)]
    try:
        group = procs[0].pid
        procs += [subprocess.Popen(c, env=e, preexec_fn=lambda: os.setpgid(0, group)) for c, e in zip(cmds[1:], envs[1:])]
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


def in_namespace(bed: "netbed.NetBed", rank: int, cmd: List[str]) -> List[str]:
    """``cmd`` run inside the bed's namespace of ``rank`` (its traffic crosses that rank's shaped link)."""
    return ["ip", "netns", "exec", bed.ns(rank), *cmd]


def run_on_bed(args, script: Path, options: Callable[[Any, int, str], List[str]]) -> Dict[str, Any]:
    """Build the emulated network (``args.ranks``, ``args.net``), run ``script`` with
    ``options(args, K, init_method)`` as rank K's worker inside namespace K with gloo on the bed's NIC,
    tear the bed down; returns the transport and the bytes the NICs sent."""
    with netbed.NetBed(args.ranks, args.net) as bed:
        init = f"tcp://{bed.address(0)}:{BED_PORT}"
        cmds = [in_namespace(bed, r, [sys.executable, str(script.resolve()), *options(args, r, init)])
                for r in range(args.ranks)]
        before = bed.counters()
        codes = run_ranks(cmds, {**os.environ, "GLOO_SOCKET_IFNAME": netbed.NIC}, getattr(args, "timeout", None))
        traffic = netbed.nic_traffic(before, bed.counters())
        described = bed.describe(mpi_env=False)
    failed = [f"rank {r} {'was ended' if c is None else f'exited {c}'}" for r, c in enumerate(codes) if c != 0]
    if failed:
        raise JobError(f"the job failed on the {args.net} bed ({', '.join(failed)}); every worker was ended")
    return {"transport": f"gloo over TCP across netbed's emulated {args.net} network: one namespace per rank, "
                         f"GLOO_SOCKET_IFNAME={netbed.NIC}, rendezvous at {init}",
            "nic_tx_bytes": traffic["nic_tx_bytes"], "nic_bytes": traffic["nic_bytes"],
            "netbed": described}


def spawn_here(worker: Callable, args) -> Dict[str, Any]:
    """The ranks as processes spawned here, gloo over TCP loopback: ``worker(rank, args, init)``."""
    import torch.multiprocessing as mp

    mp.spawn(worker, args=(args, f"tcp://127.0.0.1:{free_port()}"), nprocs=args.ranks, join=True)
    return {"transport": "gloo over TCP loopback, one machine", "nic_tx_bytes": None}


def run_job(args, script: Path, worker: Callable, options: Callable[[Any, int, str], List[str]],
            here: tuple = ("shm",)) -> tuple:
    """Run ``args``'s job -- spawned here when ``args.net`` is in ``here``, else across the bed -- and
    return (the records rank 0 handed over, the transport's description).

    ``args.json`` is made absolute, its folder created, and ``args.worker_out`` set to the hand-off
    file beside it (removed once read). ``options(args, K, init)`` are rank K's command-line options
    on the bed (ending with :func:`worker_options`)."""
    out = Path(args.json).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    args.json = str(out)
    raw = out.with_name(out.stem + "-raw.json")
    raw.unlink(missing_ok=True)
    args.worker_out = str(raw)
    os.environ.update(SINGLE_THREAD)
    net = spawn_here(worker, args) if args.net in here else run_on_bed(args, script, options)
    records = json.loads(raw.read_text())
    raw.unlink()
    return records, net


def check_bed_bytes(net: Dict[str, Any], hook_bytes: float, out: Path) -> None:
    """On the bed, say what crossed its NICs, and refuse a run in which fewer bytes crossed them than
    the hooks handed to gloo: its traffic bypassed the shaped links."""
    if net["nic_tx_bytes"] is None:
        return
    print(f"{net['nic_tx_bytes']:.0f} bytes crossed the bed's NICs; the hooks handed {hook_bytes:.0f} to gloo")
    if net["nic_tx_bytes"] < hook_bytes:
        raise JobError(f"fewer bytes crossed the bed's NICs than the hooks sent: gloo bypassed the shaped links "
                       f"(results in {out} are not from the emulated network)")


def seed_means(runs: List[Dict[str, Any]], keys: tuple) -> Dict[str, Any]:
    """What one hook's runs (one per seed) report together: the mean of each of ``keys``, of the wire
    bytes (None if a counter could not be read), the seeds, and the mean curve (point by point)."""
    return {**{key: float(np.mean([r[key] for r in runs])) for key in keys},
            "wire_bytes_per_step": mean_or_none([r["wire_bytes_per_step"] for r in runs]),
            "seeds": [r["seed"] for r in runs], "curve": np.mean([r["curve"] for r in runs], axis=0).tolist()}


def number(value: Optional[float], spec: str, missing: str = "-") -> str:
    """``value`` formatted with ``spec``, or ``missing`` for None (a counter not read, a target not reached)."""
    return missing if value is None else format(value, spec)


def exit_code(drive: Callable[[Any], None], args, prog: str, input_errors: tuple = ()) -> int:
    """Run ``drive(args)`` and say how it ended: 0; 2 with netbed's one line when the bed cannot be
    built; 1 with ``prog``'s line when the job failed (JobError) or its input was bad (``input_errors``)."""
    try:
        drive(args)
    except netbed.NetBedError as e:
        print(f"netbed: {e}", file=sys.stderr)
        return 2
    except (JobError, *input_errors) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    return 0


def seconds_to(curve: List[List[float]], reached: Callable[[float], bool]) -> Optional[float]:
    """The first cumulative seconds of ``curve`` ([seconds, value] per point) whose value is
    ``reached``; None if none is."""
    hit = [point[0] for point in curve if reached(point[1])]
    return float(hit[0]) if hit else None


def mean_or_none(values: List[Optional[float]]) -> Optional[float]:
    """The mean, or None when any value is None (a counter that could not be read)."""
    return None if any(v is None for v in values) else float(np.mean(values))
