"""Downloads that cannot fill the disk, cannot leave partial files, cannot accept unverifiable content
silently, and cannot replace a user's file: real servers on 127.0.0.1, real subprocesses."""

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpiopt.data import sha256_file
from mpiopt.datasets import REGISTRY, download
from mpiopt.errors import InputError

from _http import serve, stream_server  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[1]

def test_an_oversized_file_is_refused_from_its_content_length(serve, libsvm_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "a1a").write_bytes((libsvm_dir / "a1a").read_bytes() * 3)
    dest = tmp_path / "dest"
    with pytest.raises(InputError, match=r"the server announced 344454 bytes but this dataset has at most "
                                         r"114818 bytes, so it is not the registered file; nothing was saved"):
        download("a1a", dest, mirror=serve(served), progress=False)
    assert list(dest.iterdir()) == []


def test_an_endless_stream_stops_at_the_size_cap_and_leaves_nothing(stream_server, tmp_path):
    with pytest.raises(InputError, match=r"the server sent more than 114818 bytes"):
        download("a1a", tmp_path, mirror=stream_server("endless"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_a_download_removes_the_partial_file(stream_server, tmp_path):
    dest = tmp_path / "dest"
    proc = subprocess.Popen([sys.executable, "-m", "mpiopt", "datasets", "download", "a1a", "--dir", str(dest),
                             "--mirror", stream_server("slow"), "--no-progress"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (dest.is_dir() and any(dest.iterdir())):  # the .part file is open
        assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert list(dest.iterdir()) == []


def test_an_unverifiable_dataset_is_refused_unless_allowed(serve, libsvm_dir, tmp_path, run_cli):
    served = tmp_path / "served"
    served.mkdir()
    (served / "madelon").write_text("+1 1:1\n-1 2:1\n")
    url = serve(served)
    refused = run_cli(["datasets", "download", "madelon", "--dir", tmp_path / "dest", "--mirror", url])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("mpiopt: error: madelon has no known sha256, so a download of it cannot be "
                                     "verified and could be any file; pass --allow-unverified")
    assert not (tmp_path / "dest").exists()
    accepted = run_cli(["datasets", "download", "madelon", "--dir", tmp_path / "dest", "--mirror", url,
                        "--allow-unverified", "--no-progress"])
    assert accepted.returncode == 0, accepted.stderr
    assert "mpiopt: warning: no known sha256 for madelon" in accepted.stderr


def test_preprocess_of_an_unverifiable_dataset_needs_the_flag_too(serve, tmp_path, run_cli):
    res = run_cli(["preprocess", "--dataset", "madelon", "--data-dir", tmp_path, "--mirror", "http://127.0.0.1:9",
                   "--workers", 2, "--out", tmp_path / "out"])
    assert res.returncode == 2 and "pass --allow-unverified" in res.stderr


def test_the_list_marks_unverified_entries():
    unverified = {name for name, info in REGISTRY.items() if info.sha256 is None}
    assert unverified == {"a5a.t", "madelon", "real-sim", "rcv1", "rcv1.t", "covtype"}
    out = subprocess.run([sys.executable, "-m", "mpiopt", "datasets", "list"], capture_output=True, text=True,
                         timeout=60).stdout
    for name in unverified:
        assert re.search(rf"^{re.escape(name)} .* unverified ", out, re.M), name
    assert "refused unless --allow-unverified" in out


def test_a_changed_file_is_kept_unless_force(serve, libsvm_dir, tmp_path, run_cli):
    edited = tmp_path / "a1a"
    edited.write_text("+1 1:1\n-1 2:1\n")
    url = serve(libsvm_dir)
    refused = run_cli(["datasets", "download", "a1a", "--dir", tmp_path, "--mirror", url, "--no-progress"])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert refused.stderr == (f"mpiopt: error: {edited} already exists and differs from the registered file; it "
                              f"was left as it is: pass --force to replace it with a fresh download, or move it "
                              f"away\n")
    assert edited.read_text() == "+1 1:1\n-1 2:1\n"
    replaced = run_cli(["datasets", "download", "a1a", "--dir", tmp_path, "--mirror", url, "--no-progress",
                        "--force"])
    assert replaced.returncode == 0, replaced.stderr
    assert sha256_file(edited) == REGISTRY["a1a"].sha256


def test_every_entry_has_a_size_cap_and_verified_ones_their_exact_size(libsvm_dir):
    for info in REGISTRY.values():
        assert info.max_bytes > 0, info.name
        if info.sha256 and (libsvm_dir / info.filename).is_file():
            assert (libsvm_dir / info.filename).stat().st_size == info.max_bytes, info.name
