"""The network test bed's lock (it runs as root): no symbolic link followed, nothing truncated, 0600,
and ``cleanup`` refuses to run while a bed holds the lock. No namespaces are built here."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import netbed  # noqa: E402


def test_lock_is_created_0600_and_held(tmp_path):
    path = tmp_path / "bed.lock"
    with netbed.open_lock(path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with pytest.raises(netbed.NetBedError, match="another test bed is up"):
            netbed.open_lock(path)
    netbed.open_lock(path).close()  # released with its file


def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("do not empty me")
    (tmp_path / "bed.lock").symlink_to(victim)
    with pytest.raises(netbed.NetBedError, match="symbolic link"):
        netbed.open_lock(tmp_path / "bed.lock")
    assert victim.read_text() == "do not empty me"


def test_a_planted_hard_link_is_refused_and_an_existing_lock_not_truncated(tmp_path):
    victim = tmp_path / "precious.txt"
    victim.write_text("do not empty me")
    os.link(victim, tmp_path / "bed.lock")
    with pytest.raises(netbed.NetBedError, match="single link"):
        netbed.open_lock(tmp_path / "bed.lock")
    assert victim.read_text() == "do not empty me"
    (tmp_path / "other.lock").write_text("kept")
    netbed.open_lock(tmp_path / "other.lock").close()
    assert (tmp_path / "other.lock").read_text() == "kept"


def test_cleanup_waits_for_no_bed_it_would_break(tmp_path):
    lock = tmp_path / "bed.lock"
    with netbed.open_lock(lock):
        res = subprocess.run([sys.executable, str(REPO / "benchmarks" / "netbed.py"), "cleanup"], capture_output=True,
                             text=True, timeout=60, env={**os.environ, "MPIOPT_NETBED_LOCK": str(lock)})
    assert res.returncode == 2
    assert res.stderr.strip() == f"netbed: another test bed is up (lock {lock} is held); wait for it to finish"
