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


@pytest.fixture
def netbed_ready():
    """The namespace test bed's module (benchmarks/netbed.py), or a skip saying why this machine
    cannot build the bed (not MPICH, no ``ip``/``tc``, not root, no network namespaces, or a bed already up)."""
    import subprocess
    import sys
    from pathlib import Path

    from mpiopt import launch

    try:
        library = launch.mpi_library()
    except (FileNotFoundError, ValueError) as exc:
        pytest.skip(f"no network test bed here: {exc}")
    if library != "mpich":
        pytest.skip(f"no network test bed under {library}: the bed drives MPICH's Hydra (MPMD ranks in "
                    "namespaces, -f hostfile with -launcher-exec) and MPICH's CH4/OFI variables")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import netbed

    try:
        netbed.preflight()
    except netbed.NetBedError as exc:
        pytest.skip(f"no network test bed here: {exc}")
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no network test bed here: `ip netns list` failed: {probe.stderr.strip()}")
    try:
        netbed.open_lock(netbed.LOCK).close()
    except netbed.NetBedError as exc:
        pytest.skip(f"the network test bed is in use: {exc}")
    return netbed
