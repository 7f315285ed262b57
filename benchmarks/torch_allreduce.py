"""The TorchCommunicator's integer sum under gloo: recursive doubling against gloo's ring all-reduce.

R gloo processes on this machine (TCP loopback) sum int8 buffers of each ``--sizes`` through two
TorchCommunicators of the same group: one that always takes recursive doubling
(``doubling_bytes`` above every size) and one that always takes gloo's all-reduce
(``doubling_bytes=0``). The two take turns, ``--calls`` sums each per turn, ``--turns`` turns per
size, so a drifting machine weighs on both alike; each turn's mean wall and CPU time per call
(CPU: this rank's process, all its threads) are kept, and the medians over the turns reported
(slowest rank's wall time, mean over ranks' CPU time), with ``doubling_vs_ring`` the ratio of the
wall medians. Every sum is checked against the exact total. This is where the default
``doubling_bytes`` (64 KiB) can be checked on a machine: below the size where the ratio passes 1,
doubling is the faster algorithm there.

    python benchmarks/torch_allreduce.py --ranks 4 --json benchmarks/results/torch_allreduce.json
    sudo .venv/bin/python benchmarks/torch_allreduce.py --ranks 4 --net 1gbit \
        --json benchmarks/results/torch_allreduce_1gbit.json

writes ``{"ranks", "calls", "turns", "results": [{"bytes", "doubling_seconds", "ring_seconds",
"doubling_cpu_seconds", "ring_cpu_seconds", "doubling_vs_ring"}, ...]}``.
"""

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ddp_harness import add_worker_options, finish_worker, positive, run_job, worker_options  # noqa: E402

SIZES = (1024, 8 * 1024, 38 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024, 4 * 1024 * 1024)


def timed(sum_once, calls: int) -> List[float]:
    """[wall seconds per call, CPU seconds per call] of ``calls`` sums."""
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(calls):
        sum_once()
    return [(time.perf_counter() - t0) / calls, (time.process_time() - c0) / calls]


def worker(rank: int, args, init_method: str) -> None:
    """Rank ``rank``: time both algorithms at every size; rank 0 writes the results."""
    import torch
    import torch.distributed as dist

    from mpiopt.torch.comm import TorchCommunicator

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=args.ranks)
    doubling = TorchCommunicator(doubling_bytes=max(args.sizes))
    ring = TorchCommunicator(doubling_bytes=0)
    n = args.ranks
    results = []
    for nbytes in args.sizes:
        buf = np.empty(nbytes, dtype=np.int8)
        per = {"doubling": [], "ring": []}
        for turn in range(args.turns):
            order = ("doubling", "ring") if turn % 2 == 0 else ("ring", "doubling")
            for name in order:
                comm = doubling if name == "doubling" else ring

                def sum_once():
                    buf[...] = 1
                    comm.allreduce_int(buf, count=False)

                dist.barrier()
                per[name].append(timed(sum_once, args.calls))
                if not (buf == n).all():
                    raise AssertionError(f"{name} sum of {nbytes} bytes is wrong")
        stats = torch.tensor([[np.median([t[0] for t in per[k]]), np.median([t[1] for t in per[k]])]
                              for k in ("doubling", "ring")], dtype=torch.float64)
        slowest = stats[:, 0].clone()
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        cpu = stats[:, 1].clone()
        dist.all_reduce(cpu)
        results.append({"bytes": nbytes, "doubling_seconds": float(slowest[0]), "ring_seconds": float(slowest[1]),
                        "doubling_cpu_seconds": float(cpu[0]) / n, "ring_cpu_seconds": float(cpu[1]) / n,
                        "doubling_vs_ring": float(slowest[0] / slowest[1])})
    finish_worker(rank, args.worker_out, results)


def bed_options(args, rank: int, init_method: str) -> List[str]:
    """The options that make this script run rank ``rank`` of ``args``'s job on the bed."""
    return ["--ranks", str(args.ranks), "--sizes", *map(str, args.sizes), "--calls", str(args.calls),
            "--turns", str(args.turns), "--json", str(args.json), *worker_options(args, rank, init_method)]


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ranks", type=positive, default=4)
    p.add_argument("--sizes", type=positive, nargs="+", default=list(SIZES), help="buffer sizes in bytes (int8)")
    p.add_argument("--calls", type=positive, default=50, help="sums per turn")
    p.add_argument("--turns", type=positive, default=6, help="turns per size and algorithm")
    p.add_argument("--json", required=True)
    p.add_argument("--net", choices=("loopback", "1gbit", "10gbit"), default="loopback",
                   help="loopback: processes spawned here; 1gbit/10gbit: one rank per namespace of netbed.py's "
                        "emulated network (root), gloo on the bed's NIC")
    p.add_argument("--timeout", type=float, default=1800, help="seconds the bed's job may take")
    add_worker_options(p)
    args = p.parse_args(argv)
    if args.worker_rank is not None:
        os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        worker(args.worker_rank, args, args.worker_init)
        return 0
    if importlib.util.find_spec("torch") is None:
        print("torch_allreduce.py needs torch (pip install -e .[torch])", file=sys.stderr)
        return 2
    records, net = run_job(args, Path(__file__), worker, bed_options, here=("loopback",))
    results: List[Dict[str, Any]] = records
    extra: Dict[str, Any] = {"net": net["transport"]}
    if args.net != "loopback":
        extra.update(nic_tx_bytes=net["nic_tx_bytes"], netbed=net["netbed"])
    out = Path(args.json)
    out.write_text(json.dumps({"ranks": args.ranks, **extra, "calls": args.calls, "turns": args.turns,
                               "results": results}, indent=1))
    print(f"{'bytes':>9s} {'doubling ms':>12s} {'ring ms':>9s} {'doubling CPU ms':>16s} {'ring CPU ms':>12s} "
          f"{'doubling / ring':>16s}")
    for r in results:
        print(f"{r['bytes']:9d} {1e3 * r['doubling_seconds']:12.3f} {1e3 * r['ring_seconds']:9.3f} "
              f"{1e3 * r['doubling_cpu_seconds']:16.3f} {1e3 * r['ring_cpu_seconds']:12.3f} "
              f"{r['doubling_vs_ring']:16.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
