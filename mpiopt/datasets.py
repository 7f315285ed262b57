"""The LIBSVM binary-classification datasets mpiopt knows by name, and a verifying downloader.

Checksums come only from copies we could verify byte for byte (the project's MANIFEST.tsv of the
shared LIBSVM folder); where none is known, ``sha256`` is None and the downloader refuses the file
unless asked (``allow_unverified``, ``--allow-unverified``), then prints the hash it computed rather
than trusting an invented value. Every entry has a size cap (``max_bytes``): a download that grows
past it stops and leaves nothing behind, so a wrong or endless stream cannot fill the disk.

Default l2 values: a5a 5e-4, mushrooms 6e-4, w8a 1e-4, real-sim 2e-5 and rcv1 5e-5 follow the
experiments we reproduce; the others are our choice, a few times 1/N like those. A test file (".t")
shares its training set's l2.
"""

import difflib
import hashlib
import http.client
import os
import sys
import secrets
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Dict, Optional, Tuple, Union

from tqdm import tqdm

from mpiopt.data import sha256_file
from mpiopt.errors import InputError, exit_on_terminate, quoted

BASE_URL = "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary"
DEFAULT_DATA_DIR = "data"
_TIMEOUT_S = 60
_BLOCK = 1 << 20

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class DatasetInfo:
    """One registered LIBSVM file: where to get it, how to check it, and how to read it."""

    name: str
    filename: str
    url: str
    sha256: Optional[str]
    """Hex sha256 of the file, or None when no verified copy was available to take it from."""
    n_features: int
    l2: float
    description: str
    n_rows: Optional[int] = None
    max_bytes: int = 0
    """Exact size where the sha256 is known; elsewhere a generous bound (a few times our estimate)."""


def _entry(name: str, filename: str, sha256: Optional[str], n_features: int, l2: float, n_rows: int,
           max_bytes: int, description: str) -> DatasetInfo:
    return DatasetInfo(name, filename, f"{BASE_URL}/{filename}", sha256, n_features, l2, description, n_rows,
                       max_bytes)


REGISTRY: Dict[str, DatasetInfo] = {info.name: info for info in (
    _entry("a1a", "a1a", "eb54c45f1bdb51286f803dd092eb8202b44637a858fc6c4e533a2d64a0d94b4e",
           123, 1e-3, 1605, 114818, "Adult census income (UCI), subset 1, train"),
    _entry("a1a.t", "a1a.t", "0212d0c4a3996fe6fb6a0ab54033d9f4fa4b60369b6e3bb141821d9ffc40c04d",
           123, 1e-3, 30956, 2215057, "Adult census income (UCI), subset 1, test"),
    _entry("a5a", "a5a", "5cb3a6603de0a0eb43afcdd45b1820c71ee7f20da1c09f054696bb71cbc45ad8",
           123, 5e-4, 6414, 458892, "Adult census income (UCI), subset 5, train"),
    _entry("a5a.t", "a5a.t", None,
           123, 5e-4, 26147, 4 << 20, "Adult census income (UCI), subset 5, test"),
    _entry("a9a", "a9a", "f5d5ffd8d865ff41328e7ee043e4b020816914ff6843ff15b98905ddbedce906",
           123, 1e-4, 32561, 2329875, "Adult census income (UCI), full, train"),
    _entry("a9a.t", "a9a.t", "1f448a153f0320399a7e40836eb207655b0bde0f21fc941cc472193daa9f5de9",
           123, 1e-4, 16281, 1164628, "Adult census income (UCI), full, test"),
    _entry("w8a", "w8a", "6a9fa8fd5f524303240a5db07d4b3d4a51e8b7b4b20a914105d8e3e8c81640f2",
           300, 1e-4, 49749, 3478238, "web page categories (Platt), train"),
    _entry("w8a.t", "w8a.t", "618929ecb01bebb841daec4cae4aa07b97832d29b08652452775598929547fde",
           300, 1e-4, 14951, 1045870, "web page categories (Platt), test"),
    _entry("mushrooms", "mushrooms", "f39a4eb628dc61a7d43760815b061c9e497aa728ce1ad8bde57a09ef6043b538",
           112, 6e-4, 8124, 879712, "UCI mushrooms, edible vs poisonous (labels 1/2)"),
    _entry("phishing", "phishing", "0cf66ef36604c393da9359b2e5d894a2df8aee31fd184633cefa138add2ef08a",
           68, 1e-4, 11055, 3620168, "UCI phishing websites (labels 0/1)"),
    _entry("madelon", "madelon", None,
           500, 1e-3, 2000, 16 << 20, "NIPS 2003 feature-selection challenge, train (dense)"),
    _entry("madelon.t", "madelon.t", "ae60251b63a46c6ace348b77749e79e25d4098d629d1dead2852c3d4daf1f8ea",
           500, 1e-3, 600, 2336699, "NIPS 2003 feature-selection challenge, test (dense)"),
    _entry("real-sim", "real-sim.bz2", None,
           20958, 2e-5, 72309, 128 << 20, "real vs simulated auto/aviation UseNet articles (bzip2)"),
    _entry("rcv1", "rcv1_train.binary.bz2", None,
           47236, 5e-5, 20242, 64 << 20, "Reuters RCV1 corpus, binary, train (bzip2)"),
    _entry("rcv1.t", "rcv1_test.binary.bz2", None,
           47236, 5e-5, 677399, 2 << 30, "Reuters RCV1 corpus, binary, test (bzip2)"),
    _entry("covtype", "covtype.libsvm.binary.bz2", None,
           54, 1e-5, 581012, 64 << 20, "forest cover type, binary (labels 1/2), unscaled (bzip2)"),
)}


def lookup(name: str) -> DatasetInfo:
    """The registry entry ``name``; an InputError lists close names (and where to see all) if unknown."""
    if name in REGISTRY:
        return REGISTRY[name]
    close = difflib.get_close_matches(name, REGISTRY, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise InputError(f"unknown dataset {quoted(name)}; {hint}'mpiopt datasets list' shows the registered ones, "
                     f"and --file PATH reads any LIBSVM file")


def source_url(info: DatasetInfo, mirror: Optional[str] = None) -> str:
    """The URL to fetch ``info`` from: LIBSVM's site, or ``{mirror}/{filename}``."""
    return f"{mirror.rstrip('/')}/{info.filename}" if mirror else info.url


def download(name: str, dest_dir: PathLike, mirror: Optional[str] = None, progress: bool = True, *,
             allow_unverified: bool = False, force: bool = False) -> Path:
    """Download dataset ``name`` into ``dest_dir`` (verified, atomic) and return its path.

    The file streams into a temporary file in ``dest_dir`` while being hashed, and is moved into
    place with ``os.replace`` only if its sha256 matches the registry's, so a reader never sees a
    partial or wrong file; the temporary file goes on any error, Ctrl-C, SIGTERM, or once the stream
    passes the entry's ``max_bytes``. Nothing is fetched when the right file is already there. An
    entry without a known hash is refused unless ``allow_unverified`` (a warning then gives the
    computed hash), and a different file already at the target is kept unless ``force``.
    """
    info = lookup(name)
    dest_dir = Path(dest_dir)
    target = dest_dir / info.filename
    if info.sha256 and target.is_file() and sha256_file(target) == info.sha256:
        return target
    _check_download_allowed(info, target, allow_unverified, force)
    url = source_url(info, mirror)
    with exit_on_terminate():
        tmp, out = _part_file(dest_dir, info.filename)
        try:
            with out:
                actual = _fetch(url, out, progress, info.max_bytes)
            _verify(info, url, actual)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return target


def _check_download_allowed(info: DatasetInfo, target: Path, allow_unverified: bool, force: bool) -> None:
    """Refuse, before fetching anything, an unverifiable entry or replacing a file already there."""
    if info.sha256 is None and not allow_unverified:
        raise InputError(f"{info.name} has no known sha256, so a download of it cannot be verified and could be "
                         f"any file; pass --allow-unverified to accept it anyway (then compare the printed hash "
                         f"with a trusted copy), or use a dataset whose hash is known ('mpiopt datasets list')")
    if (target.exists() or target.is_symlink()) and not force:
        what = "differs from the registered file" if info.sha256 else "cannot be verified"
        raise InputError(f"{target} already exists and {what}; it was left as it is: pass --force to replace it "
                         f"with a fresh download, or move it away")


def _part_file(dest_dir: Path, filename: str) -> Tuple[Path, BinaryIO]:
    """A new hidden temporary file in ``dest_dir`` (created if needed), open for writing.

    Opened with mode "x" (a new file with the umask's permissions; mkstemp's 0600 would make the
    dataset unreadable to other users once renamed into place).
    """
    tmp = dest_dir / f".{filename}.{secrets.token_hex(6)}.part"
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        return tmp, open(tmp, "xb")
    except OSError as exc:
        raise InputError(f"cannot write to {dest_dir} ({exc}); choose another directory") from None


def _fetch(url: str, out, progress: bool, max_bytes: int) -> str:
    """Stream ``url`` into the open file ``out``, at most ``max_bytes``; returns the received sha256."""
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            total = _content_length(response)
            if total is not None and total > max_bytes:
                raise _TooLarge(f"announced {total} bytes")
            with tqdm(total=total, unit="B", unit_scale=True, disable=not progress,
                      desc=url.rsplit("/", 1)[-1], file=sys.stderr) as bar:
                for block in iter(lambda: response.read(_BLOCK), b""):
                    received += len(block)
                    if received > max_bytes:
                        raise _TooLarge(f"sent more than {max_bytes} bytes")
                    digest.update(block)
                    out.write(block)
                    bar.update(len(block))
    except _TooLarge as exc:
        raise InputError(f"{url}: the server {exc} but this dataset has at most {max_bytes} bytes, so it is not "
                         f"the registered file; nothing was saved. Try another --mirror") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP error {exc.code} ({exc.reason})"
        else:
            reason = getattr(exc, "reason", None) or exc
        raise InputError(f"could not download {url}: {reason}; check the network and the URL, or pass "
                         f"--mirror URL of a server that has {url.rsplit('/', 1)[-1]}") from None
    return digest.hexdigest()


class _TooLarge(Exception):
    """The server sends, or announces, more bytes than the dataset can have."""


def _content_length(response) -> Optional[int]:
    """The response's Content-Length as an int, or None when absent or not a number."""
    value = response.headers.get("Content-Length")
    return int(value) if value and value.strip().isdigit() else None


def _verify(info: DatasetInfo, url: str, actual: str) -> None:
    """Raise InputError on a checksum mismatch; warn (stderr) when no checksum is known."""
    if info.sha256 is None:
        sys.stderr.write(f"mpiopt: warning: no known sha256 for {info.name} ({info.filename}), so the download "
                         f"from {url} cannot be verified; its sha256 is {actual}: compare it with a trusted copy\n")
    elif actual != info.sha256:
        raise InputError(f"{url} does not match the registered checksum of {info.name}: expected sha256 "
                         f"{info.sha256}, got {actual}; the file was not saved. Try again, or another --mirror")


def locate(name: str, data_dir: Optional[PathLike] = None, mirror: Optional[str] = None, *,
           allow_unverified: bool = False) -> Path:
    """The local path of dataset ``name``: ``data_dir/<filename>`` if present (checked against the
    registered hash when there is one), else downloaded there (``allow_unverified`` as for
    :func:`download`). ``data_dir`` defaults to ``data/``."""
    info = lookup(name)
    path = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR) / info.filename
    if not path.is_file():
        return download(name, path.parent, mirror=mirror, allow_unverified=allow_unverified)
    if info.sha256:
        actual = sha256_file(path)
        if actual != info.sha256:
            raise InputError(f"{path} has sha256 {actual} but {info.name} should have {info.sha256}; delete the "
                             f"file to download it again, or read it as it is with --file {path}")
    return path
