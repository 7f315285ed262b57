"""Where the IntSGD DDP hook pays: its step time against fp16's and fp32's over model size x network,
the convex break-even map's twin (``break_even.py``).

    python benchmarks/ddp_break_even.py [--params 1e5 1e6 1e7] [--nets shm 10gbit 1gbit] [--ranks 4] \\
        --json benchmarks/results/ddp_break_even.json          # the bed's networks need root
    python benchmarks/ddp_break_even.py --plot benchmarks/results/ddp_break_even.json   # figure + table only

Each cell is one ``hook_overlap.py step`` job (synthetic data, an MLP of 6 layers whose width gives
about the asked number of parameters, float32, SGD, DDP buckets of an eighth of the model's bytes: one
per large layer, 5): every hook's model trains side by side in each rank, the hooks' order rotated at every
step (``none`` -- no communication --, fp32 ``allreduce_hook``, fp16 ``fp16_compress_hook``, intsgd
overlapped and synchronous), and a hook's time is the median of the slowest rank's step. On the
bed's networks (``netbed.py``: one namespace per rank, a 0.3 ms token bucket) the bed is built once
per network. A cell's speed-up is the rival's step time over intsgd's (overlapped): above 1, the
integers win.

Output: ``{"machine", "config", "cells": [{"net", "ranks", "parameters", "buckets", "width",
"seconds": {hook: s}, "speedup_vs_fp16", "speedup_vs_fp32", "exposed_intsgd_seconds"}, ...],
"netbed": {net: {...}}}``.
"""

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import hook_overlap  # noqa: E402

LAYERS = 6
NETS = ("shm", "10gbit", "1gbit")


def width_for(params: float, layers: int = LAYERS) -> int:
    """The MLP width whose parameter count (inputs = width, 10 classes) is closest to ``params``."""
    # (layers - 1) (w^2 + w) + 10 w + 10 = params
    a, b = layers - 1, layers - 1 + 10
    return max(8, round((-b + math.sqrt(b * b + 4 * a * (params - 10))) / (2 * a)))


def cell(net: str, ranks: int, params: float, steps: int, bed=None) -> Dict[str, object]:
    """One (network, model size) cell: the step job and its speed-ups."""
    width = width_for(params)
    bucket_mb = max(0.01, 4 * params / 8 / 2 ** 20)
    args = [f"--width={width}", f"--layers={LAYERS}", "--batch=64", f"--bucket-mb={bucket_mb}",
            f"--steps={steps}", "--warmup=2"]
    record = hook_overlap.launch(ranks, "step", args, timeout=1800, bed=bed)
    seconds = {r["hook"]: r["seconds_per_step"] for r in record["results"]}
    ints = seconds["intsgd overlapped"]
    return {"net": net, "ranks": ranks, "parameters": record["parameters"], "buckets": record["buckets"],
            "width": width, "seconds": seconds, "speedup_vs_fp16": seconds["fp16"] / ints,
            "speedup_vs_fp32": seconds["fp32"] / ints, "exposed_intsgd_seconds": ints - seconds["none"]}


def measure(nets: Sequence[str], ranks: int, sizes: Sequence[float], steps: int) -> Dict[str, object]:
    """Every cell, one network after the other (each bed built once)."""
    cells: List[Dict[str, object]] = []
    beds: Dict[str, object] = {}
    for net in nets:
        if net == "shm":
            cells += [cell(net, ranks, p, steps) for p in sizes]
            continue
        import netbed

        with netbed.NetBed(ranks, net) as bed:
            beds[net] = bed.describe(mpi_env=False)
            cells += [cell(net, ranks, p, steps, bed) for p in sizes]
        print(table(cells), flush=True)
    return {"cells": cells, "netbed": beds}


def table(cells: Sequence[Dict[str, object]]) -> str:
    """Markdown: a row per network, a column per model size; intsgd's speed-up over fp16 / over fp32."""
    sizes = sorted({c["parameters"] for c in cells})
    nets = [n for n in NETS if any(c["net"] == n for c in cells)]
    lines = ["| net | " + " | ".join(f"{p:,} parameters" for p in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for net in nets:
        row = []
        for p in sizes:
            c = next((c for c in cells if c["net"] == net and c["parameters"] == p), None)
            row.append("-" if c is None else f"{c['speedup_vs_fp16']:.2f} / {c['speedup_vs_fp32']:.2f}")
        lines.append(f"| {net} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(cells: Sequence[Dict[str, object]], out: Path) -> None:
    """Two heat maps (vs fp16, vs fp32): networks x model sizes, log2 of the speed-up."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sizes = sorted({c["parameters"] for c in cells})
    nets = [n for n in NETS if any(c["net"] == n for c in cells)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key, rival in zip(axes, ("speedup_vs_fp16", "speedup_vs_fp32"), ("fp16", "fp32")):
        grid = np.full((len(nets), len(sizes)), np.nan)
        for c in cells:
            grid[nets.index(c["net"]), sizes.index(c["parameters"])] = c[key]
        im = ax.imshow(np.log2(grid), cmap="RdYlGn", vmin=-2, vmax=2)
        for i in range(len(nets)):
            for j in range(len(sizes)):
                if not np.isnan(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=9)
        ax.set_xticks(range(len(sizes)), [f"{p:.0e}" for p in sizes])
        ax.set_yticks(range(len(nets)), nets)
        ax.set_xlabel("parameters")
        ax.set_title(f"intsgd hook step speed-up over {rival}")
    fig.colorbar(im, ax=axes, label="log2 speed-up")
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=float, nargs="+", default=[1e5, 1e6, 1e7], help="model sizes (parameters)")
    p.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS))
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--steps", type=int, default=6, help="timed steps per hook and cell (after 2 warm-up steps)")
    p.add_argument("--json", type=Path, help="where to write the map (the figure goes beside it, .png)")
    p.add_argument("--plot", type=Path, help="draw the figure and print the table of this JSON, and exit")
    args = p.parse_args(argv)
    if args.plot:
        cells = json.loads(args.plot.read_text())["cells"]
        plot(cells, args.plot.with_suffix(".png"))
        print(table(cells))
        return 0
    if not args.json:
        p.error("--json is required unless --plot is given")
    from harness import machine_info, write_json

    result = {"machine": machine_info(),
              "config": {"params": args.params, "nets": args.nets, "ranks": args.ranks, "steps": args.steps,
                         "layers": LAYERS, "batch": 64, "buckets": "bucket_cap_mb = an eighth of the model"},
              **measure(args.nets, args.ranks, args.params, args.steps)}
    write_json(args.json, result)
    plot(result["cells"], args.json.with_suffix(".png"))
    print(table(result["cells"]))
    print(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
