"""The cluster path of the README: MPICH's ``mpiexec -f hostfile`` naming the test bed's addresses
(one emulated host per rank; an ssh stand-in enters the host's namespace) starts ``mpiopt run``,
whose integer result equals the shared-memory run's bit for bit."""

import json

from mpilaunch import run_mpi

JOB = ["run", "--method", "vr-intdiana", "--iters", "200", "--batch", "40", "--log-every", "50", "--no-progress"]


def test_hostfile_launch_across_the_bed_equals_the_shm_run(netbed_ready, a5a_for, tmp_path):
    data = a5a_for(2)
    shm = run_mpi(2, [*JOB, "--data", data, "--out", tmp_path / "shm.json"], timeout=60)
    assert shm.returncode == 0, shm.stderr
    with netbed_ready.NetBed(2, "1gbit") as bed:
        info = netbed_ready.run_job(bed, ["mpiopt", *JOB, "--data", str(data), "--out", str(tmp_path / "bed.json")],
                                    timeout=60, launch_by="hostfile")
    assert info["returncode"] == 0
    assert info["launch"] == "hostfile"
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("shm.json", "bed.json"))
    assert b["n_ranks"] == 2
    assert b["x_final"] == a["x_final"]
    assert all(r["tx_bytes"] >= b["history"]["wire_bytes"][-1] for r in info["nic_bytes"])
