"""``benchmarks/netbed.py run``: an mpiopt job across the emulated cluster (one namespace per rank,
MPI over TCP through shaped links) gives an integer method the same ``x_final``, bit for bit, as the
same job on shared memory, and its traffic really crosses the bed's NICs; ``benchmarks/ddp_hooks.py
--net 1gbit`` runs its gloo workers across the bed the same way."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mpilaunch import run_mpi

REPO = Path(__file__).resolve().parents[2]
JOB = ["run", "--method", "vr-intdiana", "--iters", "300", "--batch", "40", "--log-every", "50", "--no-progress"]


def test_bed_run_matches_shared_memory_bit_for_bit(netbed_ready, a5a_for, tmp_path):
    data = a5a_for(2)
    shm = run_mpi(2, [*JOB, "--data", data, "--out", tmp_path / "shm.json"], timeout=60)
    assert shm.returncode == 0, shm.stderr
    stats = tmp_path / "bed-stats.json"
    bed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "netbed.py"), "run", "--ranks", "2", "--rate", "1gbit",
                          "--timeout", "60", "--json", str(stats), "--", "mpiopt", *JOB, "--data", str(data),
                          "--out", str(tmp_path / "bed.json")], capture_output=True, text=True, timeout=90)
    assert bed.returncode == 0, bed.stderr
    assert "bytes crossed the NICs" in bed.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("shm.json", "bed.json"))
    assert a["status"] == b["status"] == "max_iter"
    assert b["x_final"] == a["x_final"]
    # Every rank sent at least its integers (and the trace's float evaluations) through its NIC.
    sent = json.loads(stats.read_text())["nic_bytes"]
    assert all(r["tx_bytes"] >= b["history"]["wire_bytes"][-1] for r in sent), sent


def test_bed_run_passes_the_jobs_failure_on(netbed_ready, tmp_path):
    bed = subprocess.run([sys.executable, str(REPO / "benchmarks" / "netbed.py"), "run", "--ranks", "2", "--", "mpiopt",
                          "run", "--data", str(tmp_path / "nothing"), "--method", "sgd", "--out", str(tmp_path / "t.json")],
                         capture_output=True, text=True, timeout=90)
    assert bed.returncode != 0
    assert "nothing" in bed.stderr and "the job exited" in bed.stderr


def test_ddp_hooks_across_the_1gbit_bed(netbed_ready, tmp_path):
    """benchmarks/ddp_hooks.py --net 1gbit: gloo's traffic crosses the shaped links (the NICs sent at
    least what the hooks handed to the collectives), the records keep their contract, intsgd sends
    fewer bytes per step than fp32 allreduce."""
    pytest.importorskip("torch")
    out = tmp_path / "ddp.json"
    res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "ddp_hooks.py"), "--net", "1gbit", "--ranks", "2",
                          "--epochs", "1", "--seeds", "1", "--datasets", "digits", "--hooks", "allreduce", "intsgd",
                          "--timeout", "60", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["net"] == "1gbit" and netbed_ready.NIC in report["transport"]
    assert report["identical_on_all_ranks"] is True
    rows = {r["hook"]: r for r in report["results"]}
    assert sorted(rows) == ["allreduce", "intsgd"]
    for r in rows.values():
        assert {"hook", "dataset", "test_accuracy", "bytes_per_step", "seconds_per_step", "seeds", "curve",
                "seconds_to_accuracy"} <= set(r)
    assert report["nic_tx_bytes"] >= report["hook_bytes"] > 0
    assert rows["intsgd"]["bytes_per_step"] < rows["allreduce"]["bytes_per_step"]
    assert netbed_ready.namespaces() == []
