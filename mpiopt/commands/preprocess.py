"""``mpiopt preprocess``: a LIBSVM file -> one shard per worker + meta.json (L, f*, x*, checksums).

    mpiopt preprocess --dataset a5a --workers 12 --out data/a5a-12
    mpiopt preprocess --file my.svm --n-features 300 --workers 4 --l2 1e-4 --out data/my-4

Rows are scaled to unit norm and split into contiguous blocks in file order (heterogeneous workers);
--shuffle permutes them first. The last N mod workers rows are dropped so all shards are equal.
An existing --out folder is replaced only with --force.
"""

import argparse
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from mpiopt.commands import plain
from mpiopt.data import MAX_FEATURES, ZERO_BASED, check_out_dir, load_libsvm, preprocess, sha256_file
from mpiopt.datasets import DEFAULT_DATA_DIR, locate, lookup
from mpiopt.errors import InputError

FILE_DEFAULT_L2 = 1e-4
"""l2 for --file without --l2: our choice, about 1/N for the datasets we use; pass --l2 to choose."""


def register(sub) -> None:
    """Add the ``preprocess`` subcommand."""
    p = sub.add_parser("preprocess", help="split a LIBSVM dataset into per-worker shards",
                       description=plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="NAME", help="a registered dataset ('mpiopt datasets list')")
    source.add_argument("--file", metavar="PATH", help="any LIBSVM file (plain, .gz or .bz2)")
    p.add_argument("--data-dir", metavar="DIR",
                   help=f"with --dataset: where the file is, or is downloaded to (default {DEFAULT_DATA_DIR}/)")
    p.add_argument("--mirror", metavar="URL", help="with --dataset: download from URL/<file> instead of LIBSVM's site")
    p.add_argument("--allow-unverified", action="store_true",
                   help="with --dataset: accept a download whose sha256 is unknown ('mpiopt datasets list')")
    p.add_argument("--n-features", type=int, metavar="D",
                   help="with --file: number of features (default: the largest index in the file)")
    p.add_argument("--zero-based", choices=tuple(ZERO_BASED),
                   help="whether feature indices start at 0: 'auto' (the default with --file) reads a file as "
                        "zero-based when any index is 0, as scikit-learn's loader does (its dump_svmlight_file "
                        "writes zero-based files by default); 'no' (the default with --dataset: LIBSVM's files) "
                        "refuses an index 0")
    p.add_argument("--max-features", type=int, default=MAX_FEATURES, metavar="D",
                   help=f"refuse data with more features than this (default {MAX_FEATURES}): each dense vector "
                        f"of d features takes 8 d bytes")
    p.add_argument("--workers", type=int, required=True, metavar="N", help="number of shards (= MPI ranks)")
    p.add_argument("--l2", type=float, metavar="X",
                   help=f"l2 regularization (default: the dataset's; {FILE_DEFAULT_L2:g} with --file)")
    p.add_argument("--no-normalize", action="store_true", help="keep rows as they are (default: unit norm)")
    p.add_argument("--shuffle", action="store_true", help="permute rows before splitting (homogeneous shards)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of --shuffle (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder, e.g. data/a5a-12")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder of an earlier preprocess")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    """Load, preprocess and write the shards, then print a summary."""
    started = time.perf_counter()
    _check_out_free(Path(args.out), args.force)
    path, name, n_features, l2 = _resolve_source(args)
    try:
        zero_based = args.zero_based or ("no" if args.dataset else "auto")
        X, y = load_libsvm(path, n_features, args.max_features, zero_based=ZERO_BASED[zero_based])
        meta = preprocess(X, y, args.workers, l2, args.out, dataset=name, source_sha256=sha256_file(path),
                          normalize=not args.no_normalize, shuffle=args.shuffle, seed=args.seed)
    except MemoryError:
        raise InputError(f"not enough memory to preprocess {path}; use a machine with more memory, or check the "
                         f"data for a stray huge feature index (--max-features caps the feature count)") from None
    print(_summary(meta, path, args, time.perf_counter() - started))
    return 0


def _check_out_free(out: Path, force: bool) -> None:
    """Refuse, before any work, an --out that preprocess would refuse, and replacing an earlier
    output without --force."""
    check_out_dir(out)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"--out {out} already exists and is not empty; pass --force to replace an earlier "
                         f"output there, or choose another --out")


def _resolve_source(args: argparse.Namespace) -> Tuple[Path, str, Optional[int], float]:
    """(file to read, dataset name, n_features, l2) from --dataset or --file and their options."""
    if args.dataset:
        if args.n_features is not None:
            raise InputError("--n-features goes with --file; a registered dataset has a known feature count")
        info = lookup(args.dataset)
        path = locate(args.dataset, args.data_dir, args.mirror, allow_unverified=args.allow_unverified)
        return path, info.name, info.n_features, info.l2 if args.l2 is None else args.l2
    if args.data_dir is not None or args.mirror is not None:
        raise InputError("--data-dir and --mirror go with --dataset; --file reads the given path")
    return Path(args.file), Path(args.file).name, args.n_features, FILE_DEFAULT_L2 if args.l2 is None else args.l2


def _summary(meta: Dict[str, Any], path: Path, args: argparse.Namespace, seconds: float) -> str:
    """A few lines on what was written: sizes, dropped rows, constants, accuracy of x*, time."""
    m = meta["n_samples"] // meta["n_workers"]
    dropped = (f"dropped the last {meta['n_dropped']} row(s) so every worker has {m}" if meta["n_dropped"]
               else "no rows dropped")
    l2_note = " (default for --file; pass --l2 to choose)" if args.file and args.l2 is None else ""
    return "\n".join((
        f"{meta['dataset']}: {path} (sha256 {meta['sha256'][:12]}...)",
        f"  {meta['n_samples'] + meta['n_dropped']} rows x {meta['n_features']} features -> "
        f"{meta['n_workers']} workers x {m} rows; {dropped}",
        f"  l2 = {meta['l2']:g}{l2_note}, L = {meta['L']:.6g} (workers {min(meta['L_workers']):.6g} .. "
        f"{max(meta['L_workers']):.6g})",
        f"  f* = {meta['f_star']!r}, ||grad f(x*)|| = {meta['grad_norm_at_x_star']:.2e}",
        f"wrote {args.out} ({meta['n_workers']} shards + meta.json) in {seconds:.2f} s",
    ))
