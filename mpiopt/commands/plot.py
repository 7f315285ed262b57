"""``mpiopt plot TRACE.json [...] --out FIG.png``: convergence against iterations, bits and seconds."""

import argparse

from mpiopt.plot import plot_traces


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot traces written by 'mpiopt run'", description=__doc__)
    p.add_argument("traces", nargs="+", metavar="TRACE.json", help="trace files; seeds of one config form a band")
    p.add_argument("--out", required=True, metavar="FIG.png", help="output figure (.png, .pdf or .svg)")
    p.add_argument("--title", default="", help="figure title (default: dataset and ranks)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    path = plot_traces(args.traces, args.out, args.title)
    print(f"figure written to {path}")
    return 0
