"""``mpiopt plot TRACE.json [...] --out FIG.png``: convergence against iterations, bits and seconds."""

import argparse

from mpiopt.commands import plain
from mpiopt.plot import METRICS, plot_traces


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot traces written by 'mpiopt run'", description=plain(__doc__))
    p.add_argument("traces", nargs="+", metavar="TRACE.json", help="trace files; seeds of one config form a band")
    p.add_argument("--out", required=True, metavar="FIG.png", help="output figure (.png, .pdf or .svg)")
    p.add_argument("--title", default="", help="figure title (default: dataset and ranks)")
    p.add_argument("--metric", choices=METRICS, default="auto",
                   help="error axis: f_gap (f - f*), dist_sq (||x - x*||^2, what 'mpiopt run --tol' uses), "
                        "grad_norm_sq, or auto (default: the first of those that every trace has)")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    path = plot_traces(args.traces, args.out, args.title, metric=args.metric)
    print(f"figure written to {path}")
    return 0
