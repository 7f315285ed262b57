"""The trace's ``env``: Slurm's job id and version recorded under Slurm, nothing added outside it."""

from mpiopt import trace


def test_no_slurm_keys_outside_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert trace.slurm_facts() == {}
    assert "slurm_job_id" not in trace.environment("MPICH", 2)


def test_slurm_job_id_and_version_under_slurm(monkeypatch, tmp_path):
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\necho 'slurm 22.05.8'\n")
    srun.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "417")
    env = trace.environment("MPICH", 4)
    assert env["slurm_job_id"] == "417" and env["slurm_version"] == "22.05.8"


def test_slurm_version_is_null_without_srun(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("SLURM_JOB_ID", "9")
    assert trace.slurm_facts() == {"slurm_job_id": "9", "slurm_version": None}
