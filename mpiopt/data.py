"""From a LIBSVM file to the shard each rank loads: read and validate, preprocess, load and verify.

The pipeline (``mpiopt preprocess``) is::

    load_libsvm(path) -> (X, y in {-1,+1}) -> preprocess(X, y, n_workers, ...) -> out_dir/
        shard_000.npz ... shard_{n-1}.npz   one worker's rows (CSR arrays + labels)
        meta.json                           sizes, l2, L, L_workers, f*, x*, checksums

and every rank of ``mpiopt run`` calls ``load_shard(out_dir, rank, n_ranks)``.

Errors are the user's to fix (a malformed line, a shard set made for another rank count), so each
raises :class:`~mpiopt.errors.InputError` naming the file, the line where there is one, and what to do.
The happy path is vectorized; the line-by-line diagnostic pass runs only once something is wrong.
"""

import bz2
import gzip
import hashlib
import io
import json
import math
import os
import re
import shutil
import secrets
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import scipy.sparse as sp

from mpiopt.errors import InputError, exit_on_terminate, quoted
from mpiopt.problems.logistic import spectral_norm_sq
from mpiopt.reference import solve_logistic

PathLike = Union[str, "os.PathLike[str]"]

FORMAT_VERSION = 1
"""Version of the shard/meta layout; bumped whenever a reader of the old layout would misread the new."""

META_FILE = "meta.json"
META_KEYS = (
    "format_version", "dataset", "n_samples", "n_features", "n_workers", "l2", "L", "L_workers",
    "f_star", "grad_norm_at_x_star", "x_star", "sha256", "shard_sha256", "normalize", "shuffle", "seed",
    "n_dropped", "preprocess_seconds", "meta_sha256",
)
SHARD_KEYS = ("data", "indices", "indptr", "shape", "labels")

_SHARD_NAME = re.compile(r"shard_\d{3,}\.npz\Z")
_LINE_FORMAT = "LIBSVM lines read '<label> <index>:<value> ...' with integer indices from 1, strictly increasing"
_DECOMPRESS_ERRORS = (OSError, EOFError, zlib.error)
_MAX_INDEX = 2**31 - 1
"""LIBSVM stores feature indices in a C int."""
MAX_FEATURES = 10_000_000
"""Default cap on the feature count (``--max-features``): preprocessing keeps several dense vectors of
that length (x*, gradients; 80 MB each at the cap), so one stray index such as 2147483647 in a tiny
file would otherwise ask for many GiB. Raise it for data that really is that wide."""


def shard_name(rank: int) -> str:
    """File name of rank ``rank``'s shard."""
    return f"shard_{rank:03d}.npz"


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks so large downloads need no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Reading LIBSVM files


ZERO_BASED = {"no": False, "yes": True, "auto": "auto"}
"""``--zero-based`` values, as scikit-learn's ``load_svmlight_file(zero_based=...)`` takes them."""


def load_libsvm(path: PathLike, n_features: Optional[int] = None,
                max_features: int = MAX_FEATURES,
                zero_based: Union[bool, str] = False) -> Tuple[sp.csr_matrix, np.ndarray]:
    """Read a LIBSVM file (plain, .gz or .bz2) as (X CSR float64, y float64 in {-1, +1}).

    ``n_features`` fixes the column count (files do not record it, and a file whose last columns are
    all zero would otherwise come out narrower: a5a reads as 122 columns, LIBSVM says 123).
    ``zero_based``: False (LIBSVM's own files: indices from 1, an index 0 is an error), True (indices
    from 0, as scikit-learn's ``dump_svmlight_file`` writes by default) or ``"auto"`` (scikit-learn's
    rule: zero-based when any index in the file is 0, else one-based).
    More than ``max_features`` columns is refused before anything of that size is allocated.
    The two label values are mapped to -1 (the smaller) and +1. Raises InputError for anything
    that is not a clean binary-classification LIBSVM file, naming the first offending line.
    """
    if n_features is not None and (not isinstance(n_features, (int, np.integer)) or n_features < 1):
        raise InputError(f"n_features must be a positive integer, got {quoted(n_features)}")
    if n_features is not None:
        check_feature_count(n_features, max_features, "--n-features")
    if zero_based not in (False, True, "auto"):
        raise InputError(f"zero_based must be False, True or 'auto', got {quoted(zero_based)}")
    _check_readable(path)
    X, y = _read_svmlight(path, n_features, zero_based)
    check_feature_count(X.shape[1], max_features, f"{path}: the largest feature index")
    if X.shape[0] == 0:
        raise InputError(f"{path}: no data rows (the file is empty or holds only comments); "
                         f"check the path, or download the file again")
    if not (np.isfinite(X.data).all() and np.isfinite(y).all()) or np.unique(y).size > 2:
        raise InputError(_diagnose(path, n_features, zero_based)
                         or f"{path}: non-finite values or more than two label values; fix the file")
    return X, binary_labels(y, str(path))


def check_feature_count(d: int, max_features: int, what: str) -> None:
    """Raise InputError when ``d`` features exceed ``max_features``, saying what that would cost."""
    if d > max_features:
        gib = d * 8 / 2**30
        raise InputError(f"{what} is {d}, more than --max-features {max_features}: every dense vector of that "
                         f"length takes {gib:.3g} GiB and preprocessing needs several; check the data (a stray "
                         f"huge index?), or pass --max-features {d} if it really has that many features")


def _check_readable(path: PathLike) -> None:
    """Raise InputError when ``path`` is not a readable regular file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file; check the path (or use --dataset NAME to download it)")
    if not p.is_file():
        raise InputError(f"{path}: not a regular file; give the path of a LIBSVM file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{path}: permission denied; make the file readable")


def _read_svmlight(path: PathLike, n_features: Optional[int],
                   zero_based: Union[bool, str]) -> Tuple[sp.csr_matrix, np.ndarray]:
    """scikit-learn's fast reader, with its terse errors replaced by our diagnosis of the first bad line."""
    from sklearn.datasets import load_svmlight_file  # here, not at the top: every rank imports this module

    try:
        X, y = load_svmlight_file(str(path), n_features=n_features, dtype=np.float64, zero_based=zero_based)
    except (ValueError, OverflowError, *_DECOMPRESS_ERRORS) as exc:
        raise InputError(_diagnose(path, n_features, zero_based)
                         or f"{path}: not a valid LIBSVM file ({quoted(exc, 200)}); {_LINE_FORMAT}") from None
    return sp.csr_matrix(X, dtype=np.float64), np.asarray(y, dtype=np.float64)


def binary_labels(y: np.ndarray, source: str) -> np.ndarray:
    """Map exactly two label values to -1 (the smaller) and +1; ({-1,1}, {0,1}, {1,2}, ... all work).

    Raises InputError when there are fewer or more than two classes: logistic regression is binary.
    """
    classes = np.unique(y)
    if classes.size != 2:
        shown = ", ".join(f"{c:g}" for c in classes[:5]) + (", ..." if classes.size > 5 else "")
        raise InputError(f"{source}: labels take {classes.size} distinct value(s) ({shown}) but logistic "
                         f"regression needs exactly two classes; use a binary dataset or relabel it")
    return np.where(y == classes[0], -1.0, 1.0)


def _open_binary(path: PathLike):
    """Open a possibly compressed file for reading bytes, chosen by suffix as scikit-learn does."""
    suffix = Path(path).suffix
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")


def _diagnose(path: PathLike, n_features: Optional[int], zero_based: Union[bool, str] = False) -> Optional[str]:
    """The error message for the first offending line of ``path``, or None when every line is fine.

    A Python loop over lines: it only runs after the fast reader failed or its output failed a check.
    """
    labels: set = set()
    lineno = 0
    try:
        with _open_binary(path) as f:
            hint = _sniff(f.peek(64)[:64], path)
            if hint:
                return f"{path}:1: {hint}"
            for lineno, line in enumerate(f, start=1):
                problem = _check_line(line, n_features, labels, 1 if zero_based is False else 0)
                if problem:
                    return f"{path}:{lineno}: {problem}"
    except _DECOMPRESS_ERRORS as exc:
        return (f"{path}:{lineno + 1}: cannot decompress ({exc}); the file is corrupt or cut off: "
                f"download it again")
    return None


def _sniff(head: bytes, path: PathLike) -> Optional[str]:
    """A diagnosis from the first bytes: compressed data under a plain name, or a Git LFS pointer."""
    suffix = Path(path).suffix
    if head.startswith(b"\x1f\x8b") and suffix != ".gz":
        return "this is gzip-compressed data; rename the file to end in .gz (or gunzip it)"
    if head.startswith(b"BZh") and suffix != ".bz2":
        return "this is bzip2-compressed data; rename the file to end in .bz2 (or bunzip2 it)"
    if head.startswith(b"version https://git-lfs"):
        return "this is a Git LFS pointer, not the data; fetch the real file (git lfs pull)"
    return None


def _check_line(line: bytes, n_features: Optional[int], labels: set, first: int = 1) -> Optional[str]:
    """What is wrong with one line of a LIBSVM file (None when nothing); adds its label to ``labels``.
    ``first`` is the smallest valid index (0 for a zero-based file)."""
    if b"\x00" in line:
        return "binary data (NUL byte): this is not a LIBSVM text file; check the path and the download"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data (not UTF-8 text): this is not a LIBSVM text file; check the path and the download"
    tokens = text.split("#", 1)[0].split()
    if not tokens:
        return None
    problem = _check_label(tokens[0], labels)
    previous = first - 1
    for token in tokens[1:]:
        if problem:
            break
        if token.startswith("qid:"):
            continue
        problem, previous = _check_feature(token, previous, n_features, first)
    return problem


def _check_label(token: str, labels: set) -> Optional[str]:
    """Check a line's label and record it; a third distinct label is an error (binary problems only)."""
    try:
        label = float(token)
    except ValueError:
        return f"label {quoted(token)} is not a number; {_LINE_FORMAT}"
    if not math.isfinite(label):
        return f"label {quoted(token)} is not a finite number; fix or delete this line"
    labels.add(label)
    if len(labels) > 2:
        seen = ", ".join(f"{v:g}" for v in sorted(labels - {label}))
        return (f"label {quoted(token)} is a third class (after {seen}); logistic regression needs exactly two "
                f"classes: use a binary dataset or relabel it")
    return None


def _check_feature(token: str, previous: int, n_features: Optional[int], first: int = 1) -> Tuple[Optional[str], int]:
    """Check one ``index:value`` token given the previous index; returns (problem, this index)."""
    index_text, colon, value_text = token.partition(":")
    if not (colon and index_text and value_text):
        return f"truncated or malformed token {quoted(token)} (expected index:value); {_LINE_FORMAT}", previous
    try:
        index = int(index_text)
    except ValueError:
        return f"feature index {quoted(index_text)} is not an integer; {_LINE_FORMAT}", previous
    if index == 0 and first == 1:
        return ("feature index 0 in a one-based file (LIBSVM indices run from 1); a zero-based file (scikit-learn's "
                "dump_svmlight_file writes one unless zero_based=False) reads with --zero-based auto or yes"), previous
    if not first <= index <= _MAX_INDEX:
        shown = index if len(index_text) <= 20 else quoted(index_text)
        return (f"feature index {shown} is invalid: LIBSVM indices run from {first} to {_MAX_INDEX}; "
                f"{_LINE_FORMAT}"), previous
    if index == previous:
        return f"duplicate feature index {index}; {_LINE_FORMAT}", index
    if index < previous:
        return f"feature index {index} follows {previous}; {_LINE_FORMAT}", index
    if n_features is not None and index - first + 1 > n_features:
        return (f"feature index {index} exceeds n_features={n_features}; pass the dataset's true feature "
                f"count (--n-features) or check that this is the right file"), index
    try:
        value = float(value_text)
    except ValueError:
        return f"value {quoted(value_text)} of feature {index} is not a number; {_LINE_FORMAT}", index
    if not math.isfinite(value):
        return f"value {quoted(value_text)} of feature {index} is not a finite float64; fix or delete this line", index
    return None, index


# --------------------------------------------------------------------------------------------------
# Preprocessing into shards


def preprocess(X, y: np.ndarray, n_workers: int, l2: float, out_dir: PathLike, *, dataset: str,
               source_sha256: Optional[str], normalize: bool = True, shuffle: bool = False,
               seed: int = 0) -> Dict[str, Any]:
    """Split (X, y) into ``n_workers`` equal shards in ``out_dir`` with a meta.json; returns the meta.

    As in the IntSGD paper's convex experiments: labels -1/+1, rows scaled to unit L2 norm (zero rows
    stay zero) unless ``normalize=False``, and worker k gets the contiguous rows [k m, (k+1) m) in the
    original order (heterogeneous data); ``shuffle=True`` permutes the rows with ``seed`` first
    (homogeneous data). The last N mod n rows are dropped so every worker has m = N // n rows
    (``meta["n_dropped"]``). The meta holds L, each worker's L_i, and x*, f* of the global objective.

    Nothing is half-written: the shards go to a temporary folder beside ``out_dir`` that replaces it
    only once complete, and that folder is removed on any error, Ctrl-C or SIGTERM. An existing
    ``out_dir`` is replaced only if it is empty or an earlier output, and never when it is the current
    directory or one above it.
    """
    started = time.perf_counter()
    X, y = _check_inputs(X, y, n_workers, l2)
    check_out_dir(Path(out_dir))
    out_dir = Path(os.path.abspath(out_dir))  # "a/.." has no name to put a sibling beside
    X, y, n_dropped = _arrange_rows(X, y, n_workers, normalize, shuffle, seed)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with exit_on_terminate():
        tmp = _sibling_dir(out_dir, "tmp")
        try:
            meta = _write_output(tmp, X, y, n_workers, l2, dataset=dataset, source_sha256=source_sha256,
                                 normalize=normalize, shuffle=shuffle, seed=seed, n_dropped=n_dropped)
            meta["preprocess_seconds"] = time.perf_counter() - started
            write_meta(tmp, meta)
            _replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return meta


def _write_output(tmp: Path, X: sp.csr_matrix, y: np.ndarray, n_workers: int, l2: float, *, dataset: str,
                  source_sha256: Optional[str], normalize: bool, shuffle: bool, seed: int,
                  n_dropped: int) -> Dict[str, Any]:
    """Write the shards into ``tmp`` and return the meta (all but its timing and checksum)."""
    m = X.shape[0] // n_workers
    shard_sha256, L_workers = [], []
    for k in range(n_workers):
        A_k = X[k * m: (k + 1) * m]
        L_workers.append(0.25 * spectral_norm_sq(A_k) / m + l2)
        shard_sha256.append(_write_shard(tmp / shard_name(k), A_k, y[k * m: (k + 1) * m]))
    x_star, f_star, grad_norm = solve_logistic(X, y, l2)
    return {
        "format_version": FORMAT_VERSION, "dataset": dataset, "n_samples": int(X.shape[0]),
        "n_features": int(X.shape[1]), "n_workers": int(n_workers), "rows_per_worker": int(m),
        "l2": float(l2), "L": 0.25 * spectral_norm_sq(X) / X.shape[0] + l2, "L_workers": L_workers,
        "f_star": float(f_star), "grad_norm_at_x_star": float(grad_norm), "x_star": x_star.tolist(),
        "sha256": source_sha256, "shard_sha256": shard_sha256, "normalize": bool(normalize),
        "shuffle": bool(shuffle), "seed": int(seed), "n_dropped": int(n_dropped),
    }


def meta_checksum(meta: Dict[str, Any]) -> str:
    """sha256 of the meta's values other than ``meta_sha256`` itself (canonical JSON): an edited
    f*, x* or L would otherwise give wrong f - f* and step sizes without a word."""
    rest = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(rest, sort_keys=True).encode()).hexdigest()


def write_meta(folder: Path, meta: Dict[str, Any]) -> None:
    """Seal ``meta`` with its checksum (in place) and write it as ``folder/meta.json``."""
    meta["meta_sha256"] = meta_checksum(meta)
    (folder / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")


def _arrange_rows(X: sp.csr_matrix, y: np.ndarray, n_workers: int, normalize: bool, shuffle: bool,
                  seed: int) -> Tuple[sp.csr_matrix, np.ndarray, int]:
    """The rows as the shards take them: normalized, permuted if asked, cut to a multiple of
    ``n_workers``; returns (X, y, number of rows dropped from the end)."""
    if normalize:
        X = normalize_rows(X)
    if shuffle:
        order = np.random.default_rng(seed).permutation(X.shape[0])
        X, y = X[order], y[order]
    keep = X.shape[0] // n_workers * n_workers
    return X[:keep], y[:keep], X.shape[0] - keep


def _check_inputs(X, y, n_workers: int, l2: float) -> Tuple[sp.csr_matrix, np.ndarray]:
    """Validate preprocess's arguments; returns X as CSR float64 and y mapped to -1/+1."""
    if not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
        raise InputError(f"the number of workers must be a positive integer, got {n_workers!r}")
    if not (isinstance(l2, (int, float, np.floating)) and math.isfinite(l2) and l2 > 0):
        raise InputError(f"l2 must be a finite number > 0 (it makes x* unique), got {l2!r}")
    X = sp.csr_matrix(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).ravel()
    if X.shape[0] != y.shape[0]:
        raise InputError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels; they must match")
    if not (np.isfinite(X.data).all() and np.isfinite(y).all()):
        raise InputError("X or y holds NaN or Inf; remove those rows first")
    if X.shape[0] < n_workers:
        raise InputError(f"{X.shape[0]} rows cannot be split over {n_workers} workers; use fewer workers")
    return X, binary_labels(y, "y")


def normalize_rows(X: sp.csr_matrix) -> sp.csr_matrix:
    """A copy of X with every nonzero row scaled to unit L2 norm (zero rows stay zero)."""
    X = X.copy()
    norms = np.sqrt(np.bincount(np.repeat(np.arange(X.shape[0]), np.diff(X.indptr)),
                                weights=X.data ** 2, minlength=X.shape[0]))
    scale = np.divide(1.0, norms, out=np.ones_like(norms), where=norms > 0)
    X.data *= np.repeat(scale, np.diff(X.indptr))
    return X


def check_out_dir(out_dir: Path) -> None:
    """Refuse an output folder we would have to destroy user files to replace, or one that cannot be
    moved aside (the current directory or one above it: ``--out .``)."""
    resolved, cwd = out_dir.resolve(), Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise InputError(f"--out {quoted(out_dir)} is the current directory or one above it, which cannot be "
                         f"replaced; give a new folder, e.g. --out data/NAME-WORKERS")
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise InputError(f"{out_dir} exists and is not a directory; choose another --out")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name != META_FILE and not _SHARD_NAME.match(p.name))
    if foreign:
        raise InputError(f"{out_dir} exists and holds files that are not mpiopt shards ({', '.join(foreign[:3])}); "
                         f"choose another --out or empty that directory")


def _write_shard(path: Path, A: sp.csr_matrix, b: np.ndarray) -> str:
    """Write one shard as an .npz (np.load reads it) with fixed timestamps, so equal data gives
    byte-identical files and checksums; returns the file's sha256."""
    arrays = {"data": A.data, "indices": A.indices, "indptr": A.indptr,
              "shape": np.asarray(A.shape, dtype=np.int64), "labels": b}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            with archive.open(zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0)), "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return sha256_file(path)


def _sibling_dir(out_dir: Path, tag: str) -> Path:
    """A new hidden folder beside ``out_dir`` (same file system, so renames are atomic), created with
    the umask's permissions rather than mkdtemp's 0700 so that other users can read the result."""
    path = out_dir.parent / f".{out_dir.name}.{tag}-{secrets.token_hex(6)}"
    path.mkdir()
    return path


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    """Move the finished ``tmp`` folder to ``out_dir``, replacing an earlier output only now."""
    if not out_dir.exists():
        os.rename(tmp, out_dir)
        return
    old = _sibling_dir(out_dir, "old")
    os.rename(out_dir, old / "previous")
    try:
        os.rename(tmp, out_dir)
    except OSError:
        os.rename(old / "previous", out_dir)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Loading shards


def read_meta(data_dir: PathLike) -> Dict[str, Any]:
    """The meta.json of a preprocessed folder, checked for every key this version needs."""
    path = Path(data_dir) / META_FILE
    if not Path(data_dir).is_dir():
        raise InputError(f"{data_dir}: no such data directory; create it with "
                         f"'mpiopt preprocess ... --out {data_dir}'")
    if not path.is_file():
        raise InputError(f"{path} not found: {data_dir} is not a preprocessed data directory; "
                         f"create it with 'mpiopt preprocess ... --out {data_dir}'")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); re-run mpiopt preprocess") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path} does not hold a JSON object; re-run mpiopt preprocess")
    missing = [key for key in META_KEYS if key not in meta]
    if missing:
        raise InputError(f"{path} lacks {', '.join(missing)}; re-run mpiopt preprocess")
    if meta["format_version"] != FORMAT_VERSION:
        raise InputError(f"{path} has format_version {quoted(meta['format_version'])} but this mpiopt reads "
                         f"{FORMAT_VERSION}; re-run mpiopt preprocess")
    if meta["meta_sha256"] != meta_checksum(meta):
        raise InputError(f"{path} was changed after mpiopt preprocess wrote it (its values no longer match its "
                         f"meta_sha256), so f*, x* or L may be wrong; re-run mpiopt preprocess")
    _check_meta_values(meta, path)
    return meta


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _finite_array(value: Any, length: int, positive: bool = False) -> bool:
    """True when ``value`` is a list of ``length`` finite numbers (all > 0 if ``positive``)."""
    if not isinstance(value, list) or len(value) != length:
        return False
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return array.shape == (length,) and bool(np.isfinite(array).all()) and (not positive or bool((array > 0).all()))


def _check_meta_values(meta: Dict[str, Any], path: Path) -> None:
    """Types, lengths and finiteness of the values a run uses; the first wrong one is an InputError."""
    for key in ("n_samples", "n_features", "n_workers"):
        if not _is_count(meta[key]):
            raise _bad_meta(path, key, "a positive integer", meta[key])
    n, d = meta["n_workers"], meta["n_features"]
    rules = (
        ("l2", lambda v: _finite_array([v], 1, positive=True), "a finite number > 0"),
        ("L", lambda v: _finite_array([v], 1, positive=True), "a finite number > 0"),
        ("f_star", lambda v: _finite_array([v], 1), "a finite number"),
        ("L_workers", lambda v: _finite_array(v, n, positive=True), f"a list of {n} finite numbers > 0 (one per worker)"),
        ("x_star", lambda v: _finite_array(v, d), f"a list of {d} finite numbers (one per feature)"),
        ("shard_sha256", lambda v: isinstance(v, list) and len(v) == n and all(
            isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in v), f"a list of {n} sha256 hex strings"),
        ("dataset", lambda v: isinstance(v, str), "a string"),
    )
    for key, ok, expected in rules:
        if not ok(meta[key]):
            raise _bad_meta(path, key, expected, meta[key])


def _bad_meta(path: Path, key: str, expected: str, value: Any) -> InputError:
    return InputError(f"{path}: {key} must be {expected}, got {quoted(json.dumps(value))}; re-run mpiopt preprocess")


def load_shard(data_dir: PathLike, rank: int, n_ranks: int) -> Tuple[sp.csr_matrix, np.ndarray, Dict[str, Any]]:
    """Rank ``rank``'s rows (A_i CSR float64, b_i float64 in {-1,+1}) and the folder's meta.

    Checks that the folder was made for ``n_ranks`` workers and that the shard is the one
    preprocess wrote (sha256, shape), so a rank never runs on the wrong or damaged data.
    """
    if not 0 <= rank < n_ranks:
        raise ValueError(f"rank {rank} is outside 0..{n_ranks - 1}")
    meta = read_meta(data_dir)
    if meta["n_workers"] != n_ranks:
        raise InputError(f"{data_dir} was preprocessed for {meta['n_workers']} workers but this run has "
                         f"{n_ranks} ranks; re-run mpiopt preprocess with --workers {n_ranks} "
                         f"(into another --out), or run with mpiexec -n {meta['n_workers']}")
    path = Path(data_dir) / shard_name(rank)
    if not path.is_file():
        raise InputError(f"{path} is missing; re-run mpiopt preprocess with --workers {n_ranks}")
    content = path.read_bytes()
    actual = hashlib.sha256(content).hexdigest()
    if actual != meta["shard_sha256"][rank]:
        raise InputError(f"{path} has sha256 {actual} but meta.json records {meta['shard_sha256'][rank]}: "
                         f"the shard was modified or damaged; re-run mpiopt preprocess")
    _check_shard_headers(content, path, meta["n_samples"] // n_ranks)
    A, b = _parse_shard(content, path)
    if A.shape[1] != meta["n_features"] or A.shape[0] != meta["n_samples"] // n_ranks:
        raise InputError(f"{path} holds a {A.shape[0]} x {A.shape[1]} matrix but meta.json says "
                         f"{meta['n_samples'] // n_ranks} x {meta['n_features']}; re-run mpiopt preprocess")
    return A, b, meta


def _check_shard_headers(content: bytes, path: Path, rows: int) -> None:
    """Compare each array's .npy header with its stored bytes and with meta.json's row count before
    anything is allocated: a header claiming 2**40 elements must not make np.load ask for 8 TiB."""
    problem = None
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            shapes = {key: _member_shape(archive, f"{key}.npy", len(content)) for key in SHARD_KEYS}
    except _BadMember as exc:
        problem = str(exc)
    except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _unreadable(path, exc) from None
    else:
        expected = {"indptr": (rows + 1,), "labels": (rows,), "shape": (2,), "indices": shapes["data"]}
        wrong = [key for key, shape in expected.items() if shapes[key] != shape] + (
            ["data"] if len(shapes["data"]) != 1 else [])
        if wrong:
            problem = (f"{wrong[0]}.npy has shape {shapes[wrong[0]]} where {rows} rows (meta.json) need "
                       f"{expected.get(wrong[0], '(nnz,)')}")
    if problem:
        raise InputError(f"{path}: {problem}; the shard is damaged or was not written by mpiopt preprocess: "
                         f"re-run mpiopt preprocess")


def _unreadable(path: Path, exc: Exception) -> InputError:
    return InputError(f"{path} is not a readable shard ({type(exc).__name__}: {quoted(exc, 200)}); "
                      f"re-run mpiopt preprocess")


class _BadMember(Exception):
    """A shard member whose header does not describe its bytes."""


def _member_shape(archive: zipfile.ZipFile, name: str, file_size: int) -> Tuple[int, ...]:
    """The shape in member ``name``'s .npy header, checked against the bytes the member really holds."""
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED or info.file_size > file_size:
        raise _BadMember(f"{name} is compressed or claims more bytes than the file has")
    with archive.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise _BadMember(f"{name} has .npy format version {version}, which preprocess never writes")
        header = f.tell()
    declared = math.prod(shape) * dtype.itemsize
    if dtype.hasobject or header + declared != info.file_size:
        raise _BadMember(f"{name} declares shape {shape} of {dtype} ({declared} bytes) but holds "
                         f"{info.file_size - header} bytes")
    return tuple(shape)


def _parse_shard(content: bytes, path: Path) -> Tuple[sp.csr_matrix, np.ndarray]:
    """Decode a shard's bytes into (A, b), turning any corruption into an InputError."""
    try:
        with np.load(io.BytesIO(content), allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in SHARD_KEYS}
        A = sp.csr_matrix((arrays["data"], arrays["indices"], arrays["indptr"]),
                          shape=tuple(int(s) for s in arrays["shape"]), dtype=np.float64)
        A.check_format(full_check=True)
        b = np.asarray(arrays["labels"], dtype=np.float64)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, zipfile.BadZipFile, EOFError) as exc:
        raise _unreadable(path, exc) from None
    if b.shape != (A.shape[0],) or not np.isin(b, (-1.0, 1.0)).all():
        raise InputError(f"{path}: labels do not match the rows or are not -1/+1; re-run mpiopt preprocess")
    return A, b
