"""mpiopt under a real one-host Slurm (Debian's slurm-wlm and munge, started by
deploy/slurm/local-cluster.sh in a folder of its own, on ports of its own): ``srun --mpi=pmi2``
with MPICH, ``srun --mpi=pmix`` with Open MPI and with Intel MPI (through Slurm's PMIx library,
I_MPI_PMI_LIBRARY), and the examples/slurm sbatch scripts give the x_final of the mpiexec run bit
for bit, and the trace records Slurm's job id and version.

The script installs the packages when they are missing (apt-get update and install: about two minutes on a
fresh machine); the module skips, with the script's reason, only where they cannot be installed."""

import glob
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mpilaunch import REPO, library_venv, run_mpi_in

from mpiopt import launch

SCRIPT = REPO / "deploy" / "slurm" / "local-cluster.sh"
RUN = ["--method", "vr-intdiana", "--iters", "200", "--batch", "16", "--seed", "5", "--kernel", "numpy"]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """SLURM_CONF of a cluster up for this module (taken down after it), or a skip naming why not."""
    state = tmp_path_factory.mktemp("slurm") / "state"
    env = {**os.environ, "MPIOPT_SLURM_STATE": str(state), "MPIOPT_SLURM_PORT": "6827"}
    res = subprocess.run(["bash", str(SCRIPT), "up"], capture_output=True, text=True, timeout=900, env=env)
    try:
        if res.returncode == 3:
            pytest.skip(f"Slurm cannot be installed here: {res.stderr.strip()[-500:]}")
        assert res.returncode == 0, res.stderr
        yield str(state / "slurm.conf")
    finally:  # also after a failed `up`: stop the daemons it started before failing
        subprocess.run(["bash", str(SCRIPT), "down"], capture_output=True, text=True, timeout=120, env=env)


@pytest.fixture(scope="module")
def reference(a5a_for, tmp_path_factory):
    """The mpiexec run (MPICH, 4 ranks) every Slurm launch must reproduce."""
    out = tmp_path_factory.mktemp("slurm-ref") / "mpiexec.json"
    res = run_mpi_in(library_venv("mpich"), 4, ["run", "--data", a5a_for(4), "--no-progress", "--out", out, *RUN])
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text())


def pmix_library() -> str:
    """Slurm's PMIx client library, which Intel MPI loads under srun --mpi=pmix (Debian's libpmix2)."""
    found = sorted(glob.glob("/usr/lib/*-linux-gnu/libpmix.so.2"))
    if not found:
        pytest.skip("no /usr/lib/*-linux-gnu/libpmix.so.2 (Debian's libpmix2) for Intel MPI under srun --mpi=pmix")
    return found[0]


def slurm_env(conf: str, venv: Path, library: str) -> dict:
    """The environment srun passes to the tasks: the library's settings for 4 ranks on this host
    (Intel MPI: told to speak PMIx through Slurm's library)."""
    extra = {"SLURM_CONF": conf}
    if library == "impi":
        extra.update(I_MPI_PMI="pmix", I_MPI_PMI_LIBRARY=pmix_library())
    return launch.mpi_env(4, extra, mpiexec=str(venv / "bin" / "mpiexec"))


def check_trace(trace: dict, reference: dict) -> None:
    assert np.array_equal(np.array(trace["x_final"]), np.array(reference["x_final"]))
    assert trace["env"]["slurm_job_id"].isdigit() and trace["env"]["slurm_version"], trace["env"]


@pytest.mark.parametrize("library,mpi", [("mpich", "pmi2"), ("openmpi", "pmix"), ("impi", "pmix")])
def test_srun_gives_the_mpiexec_iterates(slurm, reference, a5a_for, tmp_path, library, mpi):
    venv = library_venv(library)
    out = tmp_path / "srun.json"
    cmd = ["srun", f"--mpi={mpi}", "--overcommit", "-n", "4", str(venv / "bin" / "python"), "-m", "mpiopt", "run",
           "--data", str(a5a_for(4)), "--no-progress", "--out", str(out), *RUN]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=slurm_env(slurm, venv, library))
    assert res.returncode == 0, f"{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    check_trace(json.loads(out.read_text()), reference)


@pytest.mark.parametrize("library", ["mpich", "openmpi", "impi"])
def test_sbatch_example_gives_the_mpiexec_iterates(slurm, reference, a5a_for, tmp_path, library):
    venv = library_venv(library)
    out = tmp_path / "sbatch.json"
    script = REPO / "examples" / "slurm" / f"{library}.sbatch"
    env = {**slurm_env(slurm, venv, library), "MPIOPT_VENV": str(venv)}
    for name in ("I_MPI_PMI", "I_MPI_PMI_LIBRARY"):  # impi.sbatch finds Slurm's PMIx library itself
        env.pop(name, None)
    cmd = ["sbatch", "--wait", "--overcommit", "-n", "4", "-o", str(tmp_path / "job-%j.out"), str(script),
           str(a5a_for(4)), str(out), *RUN]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    logs = "".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}\n{logs[-3000:]}"
    check_trace(json.loads(out.read_text()), reference)
