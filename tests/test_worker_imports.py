"""What one rank of ``mpiopt run`` loads: only what it uses. On a5a (d = 123) the integer methods take
the numpy kernel (mpiopt.kernels.NUMBA_FROM), so numba (about 100 MB a process with its compiled
kernels) is never imported, nor matplotlib or scikit-learn; on a long vector numba is. Each run is a
fresh interpreter that reports sys.modules after the run."""

import subprocess
import sys

import numpy as np
import pytest

from mpiopt.data import load_libsvm, preprocess
from mpiopt.kernels import NUMBA_FROM, cpu_kernel

HEAVY = ("numba", "llvmlite", "matplotlib", "sklearn", "torch")


def loaded_by_run(data, method: str, *extra: str) -> set:
    code = ("import sys\nfrom mpiopt.cli import main\n"
            f"code = main(['run', '--data', {str(data)!r}, '--method', {method!r}, '--iters', '20', '--no-progress', "
            f"'--out', {str(data.parent / (method + '.json'))!r}, *{list(extra)!r}])\n"
            "print(' '.join(sorted(sys.modules)))\nraise SystemExit(code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.splitlines()[-1].split())


@pytest.fixture(scope="module")
def a5a_one(a5a_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("a5a-1") / "shards"
    X, y = load_libsvm(a5a_path, n_features=123)
    preprocess(X, y, 1, 5e-4, out, dataset="a5a", source_sha256=None)
    return out


@pytest.fixture(scope="module")
def long_vectors(tmp_path_factory):
    """A small problem of NUMBA_FROM features (long enough for the numba kernel)."""
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    X = sp.random(200, NUMBA_FROM, density=0.01, format="csr", random_state=1)
    y = np.where(rng.random(200) < 0.5, -1.0, 1.0)
    out = tmp_path_factory.mktemp("long") / "shards"
    preprocess(X, y, 1, 1e-3, out, dataset="long", source_sha256=None)
    return out


@pytest.mark.parametrize("method", ["vr-intdiana", "intsgd", "sgd"])
def test_a_run_on_a5a_loads_nothing_heavy(a5a_one, method):
    loaded = loaded_by_run(a5a_one, method, "--batch", "16")
    assert not [m for m in loaded if m.split(".")[0] in HEAVY], sorted(m for m in loaded if m.split(".")[0] in HEAVY)


def test_a_long_vector_takes_numba_where_installed(long_vectors):
    if cpu_kernel() != "numba":
        pytest.skip("numba is not installed (or MPIOPT_KERNEL forces numpy)")
    assert "numba" in loaded_by_run(long_vectors, "intsgd", "--batch", "16")
