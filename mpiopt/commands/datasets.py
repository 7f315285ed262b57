"""``mpiopt datasets list | download NAME``: the registered LIBSVM datasets and a verified download.

    mpiopt datasets list
    mpiopt datasets download a5a --dir data
    mpiopt datasets download a5a --dir data --mirror http://host/libsvm
    mpiopt datasets download madelon --allow-unverified   # no known sha256: accept what comes

A file already in --dir that differs from the registered one is kept unless --force.
"""

import argparse

from mpiopt.commands import plain
from mpiopt.datasets import DEFAULT_DATA_DIR, REGISTRY, download


def register(sub) -> None:
    """Add the ``datasets`` subcommand with its ``list`` and ``download`` actions."""
    p = sub.add_parser("datasets", help="list or download the registered LIBSVM datasets",
                       description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    listing = actions.add_parser("list", help="show the registry")
    listing.set_defaults(handler=handle_list)
    fetch = actions.add_parser("download", help="download one dataset and check its sha256")
    fetch.add_argument("name", metavar="NAME", help="a name from 'mpiopt datasets list'")
    fetch.add_argument("--dir", default=DEFAULT_DATA_DIR, metavar="DIR",
                       help=f"destination folder (default {DEFAULT_DATA_DIR}/)")
    fetch.add_argument("--mirror", metavar="URL", help="download URL/<file> instead of from LIBSVM's site")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.add_argument("--allow-unverified", action="store_true",
                       help="accept a dataset whose sha256 is unknown ('unverified' in the list)")
    fetch.add_argument("--force", action="store_true", help="replace a different file already in --dir")
    fetch.set_defaults(handler=handle_download)


def handle_list(args: argparse.Namespace) -> int:
    """Print the registry as a table, one dataset a line."""
    rows = [("name", "rows", "features", "l2", "sha256", "url")]
    for info in REGISTRY.values():
        rows.append((info.name, str(info.n_rows or "?"), str(info.n_features), f"{info.l2:g}",
                     "known" if info.sha256 else "unverified", info.url))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    print("unverified: no trusted sha256 is known, so a download is refused unless --allow-unverified is given")
    return 0


def handle_download(args: argparse.Namespace) -> int:
    """Download (or find already there) one dataset and print where it is."""
    path = download(args.name, args.dir, mirror=args.mirror, progress=not args.no_progress,
                    allow_unverified=args.allow_unverified, force=args.force)
    print(f"{args.name}: {path}")
    return 0
