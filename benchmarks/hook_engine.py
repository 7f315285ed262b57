"""CPU cost of the IntSGD DDP hook's exchange on one rank, against a copy of the same buckets.

    python benchmarks/hook_engine.py [--params 5.4e6] [--buckets 9] [--rules paper exponent]
                                     [--kernels numba numpy] [--reps 5] [--json OUT]

A model of ``params`` float32 parameters in ``buckets`` DDP buckets (each a large layer and a small
one, as a weight and its bias) goes through :class:`mpiopt.torch.intsgd_engine.IntSGDEngine`'s whole
exchange -- alpha, the rounding, the integer sum, the decoding, x~'s move and the mean written back --
on a one-rank gloo group (so the collectives cost next to nothing and what is timed is the hook's own
passes over memory: on a shared machine they are what overlap cannot hide). Side by side, in a
rotating order, a ``torch.Tensor.copy_`` of every bucket (a pass that reads and writes them: the
floor). Reported per rule and kernel: the best of ``reps`` mean step times, ns per parameter, and
that time over the copy's. The same script runs against an older checkout
(``PYTHONPATH=OLD python benchmarks/hook_engine.py``) to compare a change with the code before it.
"""

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List

import mpiopt  # before allreduce_step puts this checkout first on the path: PYTHONPATH=OLD picks the package

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import interleaved, machine_info, mean_seconds, write_json  # noqa: E402


def model(params: float, buckets: int):
    """(parameters, buckets as (index, parameters, buffer)): a weight of most of the bucket's share and
    a bias of 1000 per bucket."""
    import torch

    torch.manual_seed(0)
    share = int(params) // buckets
    tensors, made = [], []
    for i in range(buckets):
        pair = [torch.nn.Parameter(torch.randn(share - 1000)), torch.nn.Parameter(torch.randn(1000))]
        tensors += pair
        made.append((i, pair, torch.randn(share)))
    return tensors, made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=5.4e6)
    parser.add_argument("--buckets", type=int, default=9)
    parser.add_argument("--rules", nargs="+", default=["paper", "exponent"], choices=["paper", "exponent"])
    parser.add_argument("--kernels", nargs="+", default=["numba", "numpy"], choices=["numba", "numpy"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--inner", type=int, default=5, help="steps per timed repetition")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    import torch
    import torch.distributed as dist

    from mpiopt.torch.hooks import IntSGDState

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + os.path.join(tempfile.mkdtemp(), "rendezvous"),
                           rank=0, world_size=1)
    steps: Dict[str, Callable[[], None]] = {}
    total = 0
    for kernel in args.kernels:
        for rule in args.rules:
            tensors, buckets = model(args.params, args.buckets)
            total = sum(p.numel() for p in tensors)
            opt = torch.optim.SGD(tensors, lr=0.1)
            extra = {} if rule == "paper" else {"alpha": rule}
            engine = IntSGDState(None, opt, wire_dtype="auto", seed=0, overlap=False, kernel=kernel, **extra).engine

            def step(engine=engine, buckets=buckets):
                for index, params, buf in buckets:
                    engine.exchange(engine.bucket(index, params, buf), buf)

            for _ in range(3):  # the first steps (alpha's first-step rule), then the compiled kernels are warm
                step()
            steps[f"intsgd {rule} {kernel}"] = step
    copies = [(buf, buf.clone()) for _, _, buf in model(args.params, args.buckets)[1]]

    def copy() -> None:
        for dst, src in copies:
            dst.copy_(src)

    steps["copy"] = copy
    times = interleaved([mean_seconds(fn, args.inner) for fn in steps.values()], args.reps)
    best = {name: min(ts) for name, ts in zip(steps, times)}  # the best of the repetitions' means
    rows: List[Dict[str, object]] = []
    for name, seconds in best.items():
        row = {"variant": name, "seconds_per_step": seconds, "ns_per_parameter": seconds / total * 1e9,
               "over_copy": seconds / best["copy"]}
        rows.append(row)
        print(f"{name:26s} {seconds * 1e3:8.2f} ms a step  {row['ns_per_parameter']:6.2f} ns a parameter  "
              f"{row['over_copy']:6.2f}x a copy")
    if args.json:
        out = {"machine": machine_info(), "package": mpiopt.__file__, "parameters": total, "buckets": args.buckets,
               "reps": args.reps, "inner": args.inner, "results": rows}
        write_json(args.json, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
