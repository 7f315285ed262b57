"""Shared fixtures: the shared folder of real LIBSVM files, its MANIFEST, and a5a preprocessed once.

The LIBSVM files live outside the repository, in ``../shared/data/libsvm`` next to the checkout;
tests that need them are skipped (with the path in the reason) where that folder is absent.
"""

import csv
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_LIBSVM = REPO.parent / "shared" / "data" / "libsvm"


@pytest.fixture(scope="session")
def libsvm_dir() -> Path:
    """The shared folder of LIBSVM files (skips the test when it is not there)."""
    if not SHARED_LIBSVM.is_dir():
        pytest.skip(f"shared LIBSVM folder not found: {SHARED_LIBSVM}")
    return SHARED_LIBSVM


@pytest.fixture(scope="session")
def manifest(libsvm_dir: Path) -> Dict[str, Dict[str, str]]:
    """MANIFEST.tsv of the shared folder, by file name: sha256, rows, nnz, labels, ..."""
    path = libsvm_dir / "MANIFEST.tsv"
    if not path.is_file():
        pytest.skip(f"MANIFEST.tsv not found: {path}")
    with open(path, newline="") as f:
        return {row["file"]: row for row in csv.DictReader(f, delimiter="\t")}


@pytest.fixture(scope="session")
def a5a_path(libsvm_dir: Path) -> Path:
    """The real a5a file."""
    path = libsvm_dir / "a5a"
    if not path.is_file():
        pytest.skip(f"a5a not found: {path}")
    return path


@pytest.fixture(scope="session")
def a5a_shards(a5a_path: Path, tmp_path_factory) -> Path:
    """a5a preprocessed once per session for 12 workers with l2 = 5e-4 (treat it as read-only)."""
    from mpiopt.data import load_libsvm, preprocess, sha256_file

    out = tmp_path_factory.mktemp("shards") / "a5a-12"
    X, y = load_libsvm(a5a_path, n_features=123)
    preprocess(X, y, 12, 5e-4, out, dataset="a5a", source_sha256=sha256_file(a5a_path))
    return out


@pytest.fixture(scope="session")
def run_cli() -> Callable[[List[str]], subprocess.CompletedProcess]:
    """A function that runs ``python -m mpiopt ARGS`` in a subprocess, as a user would."""

    def run(args: List[str]) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mpiopt", *map(str, args)], cwd=REPO, capture_output=True,
                              text=True, timeout=300)

    return run
