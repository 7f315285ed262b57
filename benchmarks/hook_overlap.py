"""The IntSGD DDP hook's overlap with backward, and what its alpha does under other optimizers.

Three measurements, each a gloo job of R processes on this machine (file rendezvous):

``late`` (issue 21's measurement; 2 ranks): a 7-layer MLP (512 wide, float32) in several DDP buckets
(bucket_cap_mb 1); rank 1 enters backward 2 s late. On rank 0: seconds from the start of backward
until autograd computes the first layer's weight gradient (the last gradient of backward), per hook:
plain DDP (no hook), intsgd overlapped, intsgd synchronous (``overlap=False``). Step 1 (in DDP's
rebuilt buckets) is the one reported.

``step`` (R ranks, 4 by default): an MLP of ``--width`` (5.3 M parameters at 1024 x 6 layers) in
``--bucket-mb`` buckets (>= 8), float32, SGD; each hook's model trains side by side, the hooks' order
rotated each round: ``none`` (a hook that returns the bucket as it is: backward and the update without
communication), fp32 (``allreduce_hook``), fp16 (``fp16_compress_hook``), intsgd overlapped,
intsgd synchronous. ``seconds_per_step``: median over the timed steps of the slowest rank's step
(forward, backward, optimizer step); ``exposed_seconds`` = a hook's minus ``none``'s: the communication
that backward did not hide; ``cpu_seconds_per_step``: median of the CPU seconds all ranks' processes
(every thread) used in the step, and ``cpu_busy`` that over the step's seconds times the machine's
cores: near 1, the cores had no idle time left for communication to overlap with.

``semantics`` (2 ranks, digits, the MLP 64-64-10 in float32, 2 buckets; the paper's alpha, named, as
Adam's default is the exponent rule): the share of the integers
sent that are 0 under SGD (lr 0.1), momentum 0.9 (lr 0.05) and Adam (lr 1e-3), 3 epochs each (counted
on the int all-reduces a recording communicator passes on, headers excluded); and DDP + Adam test
accuracy after 8 epochs with the fp32 all-reduce and with intsgd_hook (same init and batches).

    python benchmarks/hook_overlap.py late
    python benchmarks/hook_overlap.py step --ranks 4 [--net 1gbit]     # the bed: root
    python benchmarks/hook_overlap.py semantics

prints a table and writes ``benchmarks/results/hook_overlap_<what>.json`` (``--json`` to change),
with the machine's load averages before and after (a shared machine: compare figures of one run).
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import netbed  # noqa: E402
from ddp_harness import in_namespace, run_ranks  # noqa: E402


def launch(ranks: int, what: str, args: List[str], timeout: float, bed=None) -> List[Dict[str, Any]]:
    """Run ``what`` on ``ranks`` processes; returns rank 0's JSON record(s). With ``bed`` (a built
    :class:`netbed.NetBed`) rank K runs in the bed's namespace K and gloo talks over its NIC (the
    rendezvous is a file, which needs no network). The ranks run as one process group
    (:func:`ddp_harness.run_ranks`): when one fails or ``timeout`` passes, all are ended."""
    with tempfile.TemporaryDirectory(prefix="mpiopt-overlap-") as folder:
        out = Path(folder) / "rank0.json"
        common = dict(os.environ, WORLD_SIZE=str(ranks), OMP_NUM_THREADS="1", RENDEZVOUS=str(Path(folder) / "store"),
                      OUT=str(out), **({} if bed is None else {"GLOO_SOCKET_IFNAME": netbed.NIC}))
        cmd = [sys.executable, __file__, "_worker", what, *args]
        cmds = [cmd if bed is None else in_namespace(bed, rank, cmd) for rank in range(ranks)]
        codes = run_ranks(cmds, [dict(common, RANK=str(rank)) for rank in range(ranks)], timeout)
        if any(codes):
            raise SystemExit(f"{what}: a rank failed (exit codes {codes}; None: ended when another failed)")
        return json.loads(out.read_text())


# ---- the workers (torch imported here only) --------------------------------------------------
def _setup():
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + os.environ["RENDEZVOUS"],
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    return torch, dist


def _mlp(torch, width: int, layers: int, inputs: int, classes: int, seed: int = 0):
    torch.manual_seed(seed)
    mods, size = [], inputs
    for _ in range(layers - 1):
        mods += [torch.nn.Linear(size, width), torch.nn.ReLU()]
        size = width
    return torch.nn.Sequential(*mods, torch.nn.Linear(size, classes))


def _intsgd(opt, overlap: bool, **kw):
    from mpiopt.torch.hooks import IntSGDState, intsgd_hook

    if overlap is None:  # code without the option (the synchronous hook it had)
        return IntSGDState(None, opt, seed=0, **kw), intsgd_hook
    return IntSGDState(None, opt, seed=0, overlap=overlap, **kw), intsgd_hook


def _has_overlap() -> bool:
    import inspect

    from mpiopt.torch.hooks import CompressorState

    return "overlap" in inspect.signature(CompressorState.__init__).parameters


def worker_late(args) -> Any:
    torch, dist = _setup()
    import torch.nn.functional as F

    rank = dist.get_rank()
    x = torch.randn(256, 512, generator=torch.Generator().manual_seed(rank))
    y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(rank + 7))
    modes = ["plain"] + (["intsgd overlapped", "intsgd synchronous"] if _has_overlap() else ["intsgd"])
    out = {}
    for mode in modes:
        net = _mlp(torch, 512, 7, 512, 10)
        ddp = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=1)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
        if mode != "plain":
            overlap = None if mode == "intsgd" else mode.endswith("overlapped")
            state, hook = _intsgd(opt, overlap)
            ddp.register_comm_hook(state, hook)
        reached = {}
        net[0].weight.register_hook(lambda g: reached.update(t=time.perf_counter()) and None)
        for _ in range(2):
            reached.clear()
            opt.zero_grad()
            loss = F.cross_entropy(ddp(x), y)
            if rank == 1:
                time.sleep(2.0)
            t0 = time.perf_counter()
            loss.backward()
            t_end = time.perf_counter()
            opt.step()
        out[mode] = {"first_layer_s": reached["t"] - t0, "backward_s": t_end - t0}
        dist.barrier()
    return out


def _hooks(torch, names):
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    def none_hook(_, bucket):
        fut = torch.futures.Future()
        fut.set_result(bucket.buffer())
        return fut

    def make(name, opt):
        if name == "none":
            return None, none_hook
        if name == "fp32":
            return None, default_hooks.allreduce_hook
        if name == "fp16":
            return None, default_hooks.fp16_compress_hook
        return _intsgd(opt, {"intsgd": None, "intsgd overlapped": True, "intsgd synchronous": False}[name])

    return make


def worker_step(args) -> Any:
    torch, dist = _setup()
    import torch.nn.functional as F

    names = ["none", "fp32", "fp16"] + (["intsgd overlapped", "intsgd synchronous"] if _has_overlap()
                                         else ["intsgd"])
    make = _hooks(torch, names)
    rank = dist.get_rank()
    x = torch.randn(args.batch, args.width, generator=torch.Generator().manual_seed(rank))
    y = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(rank + 7))
    runs = {}
    for name in names:
        net = _mlp(torch, args.width, args.layers, args.width, 10)
        ddp = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=args.bucket_mb)
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
        state, hook = make(name, opt)
        ddp.register_comm_hook(state, hook)
        runs[name] = (ddp, opt, state)
    params = sum(p.numel() for p in runs[names[0]][0].parameters())
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    for step in range(args.warmup + args.steps):
        order = names[step % len(names):] + names[:step % len(names)]
        for name in order:
            ddp, opt, _ = runs[name]
            dist.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            opt.zero_grad()
            F.cross_entropy(ddp(x), y).backward()
            opt.step()
            seconds = torch.tensor([time.perf_counter() - t0], dtype=torch.float64)
            cpu_seconds = torch.tensor([time.process_time() - c0], dtype=torch.float64)
            dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
            dist.all_reduce(cpu_seconds)
            if step >= args.warmup:
                times[name].append(float(seconds))
                cpu[name].append(float(cpu_seconds))
    buckets = None
    for name in names:
        state = runs[name][2]
        if state is not None and hasattr(state, "engine"):
            buckets = len(state.engine._buckets)
    import statistics

    med = {name: statistics.median(ts) for name, ts in times.items()}
    med_cpu = {name: statistics.median(cs) for name, cs in cpu.items()}
    cores = os.cpu_count() or 1
    return {"parameters": params, "buckets": buckets, "ranks": dist.get_world_size(), "cores": cores,
            "results": [{"hook": n, "seconds_per_step": med[n], "exposed_seconds": med[n] - med["none"],
                         "cpu_seconds_per_step": med_cpu[n],
                         "cpu_busy": med_cpu[n] / (med[n] * cores),
                         "steps": len(times[n])} for n in names]}


def _digits(torch):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    return X[:1500], y[:1500], X[1500:], y[1500:]


def worker_semantics(args) -> Any:
    torch, dist = _setup()
    import numpy as np
    import torch.nn.functional as F

    from mpiopt.torch.comm import TorchCommunicator

    class Counting(TorchCommunicator):
        def __init__(self):
            super().__init__()
            self.ints = self.zeros = 0

        def allreduce_int(self, buf, count=True):
            if buf.size > 3:  # the integers, less the 3 header slots
                body = buf[:-3]
                self.ints += body.size
                self.zeros += int(np.count_nonzero(body == 0))
            return super().allreduce_int(buf, count)

    rank, n = dist.get_rank(), dist.get_world_size()
    Xtr, ytr, Xte, yte = _digits(torch)
    Xr, yr = Xtr[rank::n], ytr[rank::n]

    def train(make_opt, hooked: bool, epochs: int, comm=None):
        net = _mlp(torch, 64, 2, 64, 10)
        ddp = torch.nn.parallel.DistributedDataParallel(net, bucket_cap_mb=0.01)
        opt = make_opt(ddp.parameters())
        if hooked:
            from mpiopt.torch.hooks import IntSGDState, intsgd_hook

            ddp.register_comm_hook(IntSGDState(None, opt, seed=0, comm=comm, alpha="paper"), intsgd_hook)
        g = torch.Generator().manual_seed(1)
        for _ in range(epochs):
            perm = torch.randperm(len(yr), generator=g)
            for i in range(0, len(perm) - 31, 32):
                idx = perm[i:i + 32]
                opt.zero_grad()
                F.cross_entropy(ddp(Xr[idx]), yr[idx]).backward()
                opt.step()
        with torch.no_grad():
            return float((net(Xte).argmax(1) == yte).float().mean())

    zeros = {}
    for name, make in (("sgd", lambda ps: torch.optim.SGD(ps, lr=0.1)),
                       ("momentum", lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
                       ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-3))):
        comm = Counting()
        train(make, True, 3, comm)
        counts = torch.tensor([comm.zeros, comm.ints], dtype=torch.float64)
        dist.all_reduce(counts)
        zeros[name] = float(counts[0] / counts[1])
    adam = lambda ps: torch.optim.Adam(ps, lr=1e-3)  # noqa: E731
    acc = {"fp32 allreduce": train(adam, False, 8), "intsgd_hook": train(adam, True, 8)}
    return {"zero_share": zeros, "adam_test_accuracy": acc}


def _worker(argv: List[str]) -> None:
    what = argv[0]
    args = parser().parse_args(argv)
    record = {"late": worker_late, "step": worker_step, "semantics": worker_semantics}[what](args)
    import torch.distributed as dist

    if dist.get_rank() == 0:
        Path(os.environ["OUT"]).write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("what", choices=("late", "step", "semantics"))
    p.add_argument("--ranks", type=int, default=None, help="processes (late, semantics: 2; step: 4)")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bucket-mb", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--label", default="", help="a note stored in the JSON (e.g. which code ran)")
    p.add_argument("--net", choices=("shm", "1gbit", "10gbit"), default="shm",
                   help="shm: processes here, gloo over loopback; 1gbit/10gbit: netbed.py's emulated network (root)")
    return p


def main(argv: List[str]) -> int:
    if argv and argv[0] == "_worker":
        _worker(argv[1:])
        return 0
    args = parser().parse_args(argv)
    ranks = args.ranks or (4 if args.what == "step" else 2)
    load_before = os.getloadavg()
    extra = [f"--width={args.width}", f"--layers={args.layers}", f"--batch={args.batch}",
             f"--bucket-mb={args.bucket_mb}", f"--steps={args.steps}", f"--warmup={args.warmup}"]
    if args.net == "shm":
        record = launch(ranks, args.what, extra, timeout=3600)
    else:
        with netbed.NetBed(ranks, args.net) as bed:
            record = launch(ranks, args.what, extra, timeout=3600, bed=bed)
            record["netbed"] = bed.describe(mpi_env=False)
    out = {"what": args.what, "ranks": ranks, "label": args.label, "settings": vars(args) | {"json": None},
           "load_average_before": load_before, "load_average_after": os.getloadavg(), **record}
    print(json.dumps(record, indent=1))
    print("load averages before / after:", load_before, os.getloadavg())
    path = args.json or ROOT / "benchmarks" / "results" / f"hook_overlap_{args.what}.json"
    path.write_text(json.dumps(out, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
