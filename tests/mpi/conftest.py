"""Fixtures of the tests that launch real ``mpiexec`` jobs (launch helpers are in mpilaunch.py)."""

import pytest


@pytest.fixture(scope="session")
def a5a_for(a5a_path, tmp_path_factory):
    """A function n -> folder of a5a preprocessed for n workers (l2 = 5e-4), made once per n."""
    from mpiopt.data import load_libsvm, preprocess

    X, y = load_libsvm(a5a_path, n_features=123)
    made = {}

    def shards(n: int):
        if n not in made:
            made[n] = tmp_path_factory.mktemp(f"a5a-{n}") / "shards"
            preprocess(X, y, n, 5e-4, made[n], dataset="a5a", source_sha256=None)
        return made[n]

    return shards
