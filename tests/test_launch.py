"""mpiopt.launch: each MPI library's launch settings, and which library a mpiexec belongs to."""

import os
import subprocess
import sys

import pytest

from mpiopt import launch


@pytest.mark.parametrize("library", launch.LIBRARIES)
def test_no_yield_while_ranks_fit_the_cores(library):
    """At ranks <= cores a yield adds a wake-up to every collective (2.5x slower at 2 ranks on 2 cores)."""
    for ranks in (1, 2):
        settings = launch.library_settings(library, ranks, n_cores=2, root=False)
        assert settings == {}, (library, ranks, settings)


def test_each_library_gets_its_own_yield_when_oversubscribed():
    mpich = launch.library_settings("mpich", 3, n_cores=2, root=False)
    openmpi = launch.library_settings("openmpi", 3, n_cores=2, root=False)
    impi = launch.library_settings("impi", 3, n_cores=2, root=False)
    assert mpich == {"MPIR_CVAR_ENABLE_HEAVY_YIELD": "1"}
    assert openmpi["OMPI_MCA_mpi_yield_when_idle"] == "1"
    assert openmpi["OMPI_MCA_rmaps_base_oversubscribe"] == "1"
    assert openmpi["PRTE_MCA_rmaps_default_mapping_policy"] == ":oversubscribe"
    assert not any(k.startswith("MPIR_CVAR") for k in openmpi), "MPICH's settings mean nothing to Open MPI"
    assert impi == {"I_MPI_THREAD_YIELD": "3"}


def test_open_mpi_as_root_is_allowed_only_for_root():
    assert launch.library_settings("openmpi", 2, n_cores=2, root=True) == launch.ROOT_OPENMPI
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in launch.library_settings("openmpi", 2, n_cores=2, root=False)
    assert launch.library_settings("mpich", 2, n_cores=2, root=True) == {}


def test_bad_library_or_rank_count_is_refused():
    with pytest.raises(ValueError, match="unknown MPI library 'lam'"):
        launch.library_settings("lam", 2, n_cores=2, root=False)
    with pytest.raises(ValueError, match="ranks must be >= 1"):
        launch.library_settings("mpich", 0, n_cores=2, root=False)


def test_mpi_env_follows_the_rank_count_and_lets_the_caller_win(monkeypatch):
    monkeypatch.delenv("MPIR_CVAR_ENABLE_HEAVY_YIELD", raising=False)
    monkeypatch.setattr(launch, "mpi_library", lambda mpiexec=None: "mpich")
    cores = launch.cores()
    assert "MPIR_CVAR_ENABLE_HEAVY_YIELD" not in launch.mpi_env(cores, mpiexec="mpiexec")
    assert launch.mpi_env(cores + 1, mpiexec="mpiexec")["MPIR_CVAR_ENABLE_HEAVY_YIELD"] == "1"
    monkeypatch.setenv("MPIR_CVAR_ENABLE_HEAVY_YIELD", "0")
    assert launch.mpi_env(cores + 1, mpiexec="mpiexec")["MPIR_CVAR_ENABLE_HEAVY_YIELD"] == "0"
    assert launch.mpi_env(1, {"X_EXTRA": "7"}, mpiexec="mpiexec")["X_EXTRA"] == "7"


def test_the_venv_mpiexec_is_recognised():
    """The mpiexec beside this Python is one of the known libraries (the venv's extra installed it)."""
    try:
        mpiexec = launch.mpiexec_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert launch.mpi_library(mpiexec) in launch.LIBRARIES


def test_an_unknown_mpiexec_is_named(tmp_path):
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\necho 'some other launcher 1.0'\n")
    fake.chmod(0o755)
    with pytest.raises(ValueError, match="names no MPI library mpiopt knows.*some other launcher"):
        launch.mpi_library(str(fake))


def test_cores_is_the_affinity_mask():
    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no sched_getaffinity on this platform")
    assert launch.cores() == len(os.sched_getaffinity(0)) >= 1


def test_the_env_entry_prints_what_this_venvs_mpiexec_needs_and_nothing_already_set():
    """``python -m mpiopt.launch --env N`` (the Makefile's demo) prints NAME=value words for ``env``:
    the library's settings for N ranks here, less the variables the caller set itself."""
    try:
        mpiexec = launch.mpiexec_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    many = launch.cores() + 2
    run = [sys.executable, "-m", "mpiopt.launch", "--env", str(many)]
    env = {k: v for k, v in os.environ.items() if k not in launch.library_settings(launch.mpi_library(mpiexec), many,
                                                                                      launch.cores(), True)}
    printed = subprocess.run(run, capture_output=True, text=True, timeout=60, env=env, check=True).stdout.split()
    root = os.geteuid() == 0
    want = launch.library_settings(launch.mpi_library(mpiexec), many, launch.cores(), root)
    assert dict(word.split("=", 1) for word in printed) == want and want
    first = next(iter(want))
    again = subprocess.run(run, capture_output=True, text=True, timeout=60, env={**env, first: "mine"}, check=True)
    assert dict(word.split("=", 1) for word in again.stdout.split()) == {k: v for k, v in want.items() if k != first}
    bad = subprocess.run([sys.executable, "-m", "mpiopt.launch", "--env", "0"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "ranks must be >= 1" in bad.stderr
