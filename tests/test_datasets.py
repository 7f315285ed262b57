"""mpiopt.datasets: the registry, and real downloads from a local ``python -m http.server`` (127.0.0.1 only)."""

import os
import shutil
import stat
from pathlib import Path

import pytest

from mpiopt.data import sha256_file
from mpiopt.datasets import BASE_URL, REGISTRY, download, locate, lookup
from mpiopt.errors import InputError

from _http import serve  # noqa: E402,F401 - a fixture

CLOSED_PORT_URL = "http://127.0.0.1:9"
"""The discard port, where nothing listens here: any attempt to download from it fails."""


def _leftovers(folder: Path):
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------------------------------
# The registry


def test_registry_hashes_are_the_manifest_hashes(manifest):
    known = {info.filename: info.sha256 for info in REGISTRY.values()}
    for name, row in manifest.items():
        if name in known:
            assert known[name] == row["sha256"], name
    assert {name for name, info in REGISTRY.items() if info.sha256} == set(manifest) - {"a5a.t.derived"}


def test_registry_hashes_match_the_shared_files(libsvm_dir):
    for info in REGISTRY.values():
        if info.sha256 and (libsvm_dir / info.filename).is_file():
            assert sha256_file(libsvm_dir / info.filename) == info.sha256, info.name


def test_a5a_test_file_has_no_hash_because_only_a_derived_copy_exists():
    assert REGISTRY["a5a.t"].sha256 is None


def test_registry_contents():
    expected_features = {"a1a": 123, "a5a": 123, "a9a": 123, "w8a": 300, "mushrooms": 112, "phishing": 68,
                         "madelon": 500, "real-sim": 20958, "rcv1": 47236, "covtype": 54}
    for name, d in expected_features.items():
        assert REGISTRY[name].n_features == d
    assert {name: REGISTRY[name].l2 for name in ("a5a", "mushrooms", "w8a", "real-sim", "rcv1")} == {
        "a5a": 5e-4, "mushrooms": 6e-4, "w8a": 1e-4, "real-sim": 2e-5, "rcv1": 5e-5}
    for name, info in REGISTRY.items():
        assert info.name == name and info.url == f"{BASE_URL}/{info.filename}" and info.l2 > 0


def test_lookup_suggests_close_names():
    with pytest.raises(InputError, match="did you mean a5a"):
        lookup("a5b")


# --------------------------------------------------------------------------------------------------
# Downloads over real HTTP


def test_download_from_mirror(serve, libsvm_dir, tmp_path):
    url = serve(libsvm_dir)
    path = download("a5a", tmp_path, mirror=url, progress=False)
    assert path == tmp_path / "a5a"
    assert sha256_file(path) == REGISTRY["a5a"].sha256
    assert _leftovers(tmp_path) == ["a5a"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_download_skips_a_verified_file(libsvm_dir, tmp_path):
    shutil.copy(libsvm_dir / "a5a", tmp_path / "a5a")
    assert download("a5a", tmp_path, mirror=CLOSED_PORT_URL, progress=False) == tmp_path / "a5a"


def test_wrong_hash_fails_and_leaves_nothing(serve, libsvm_dir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    tampered = bytearray((libsvm_dir / "a5a").read_bytes())
    tampered[100] = ord("9") if tampered[100] != ord("9") else ord("8")
    (served / "a5a").write_bytes(bytes(tampered))
    dest = tmp_path / "dest"
    with pytest.raises(InputError) as info:
        download("a5a", dest, mirror=serve(served), progress=False)
    message = str(info.value)
    assert REGISTRY["a5a"].sha256 in message and sha256_file(served / "a5a") in message
    assert _leftovers(dest) == []


def test_unknown_hash_downloads_with_a_warning(serve, libsvm_dir, tmp_path, capsys):
    served = tmp_path / "served"
    served.mkdir()
    shutil.copy(libsvm_dir / "a5a.t.derived", served / "a5a.t")
    path = download("a5a.t", tmp_path / "dest", mirror=serve(served), progress=False, allow_unverified=True)
    err = capsys.readouterr().err
    assert "no known sha256 for a5a.t" in err and sha256_file(path) in err
    assert sha256_file(path) == sha256_file(served / "a5a.t")


def test_missing_file_on_server(serve, libsvm_dir, tmp_path):
    url = serve(libsvm_dir)
    with pytest.raises(InputError, match=r"could not download .*/rcv1_train\.binary\.bz2: .*--mirror"):
        download("rcv1", tmp_path, mirror=url, progress=False, allow_unverified=True)
    assert _leftovers(tmp_path) == []


def test_unreachable_server(tmp_path):
    with pytest.raises(InputError, match=r"could not download http://127\.0\.0\.1:9/a5a.*--mirror"):
        download("a5a", tmp_path, mirror=CLOSED_PORT_URL, progress=False)
    assert _leftovers(tmp_path) == []


def test_locate_uses_present_file_and_downloads_missing_one(serve, libsvm_dir, tmp_path):
    shutil.copy(libsvm_dir / "a1a", tmp_path / "a1a")
    assert locate("a1a", tmp_path, mirror=CLOSED_PORT_URL) == tmp_path / "a1a"
    assert locate("a5a", tmp_path, mirror=serve(libsvm_dir)) == tmp_path / "a5a"
    assert sha256_file(tmp_path / "a5a") == REGISTRY["a5a"].sha256


def test_locate_rejects_a_present_file_with_the_wrong_hash(tmp_path):
    (tmp_path / "a5a").write_text("+1 1:1\n-1 2:1\n")
    with pytest.raises(InputError, match=r"a5a has sha256 [0-9a-f]{64} but a5a should have .*--file"):
        locate("a5a", tmp_path)


# --------------------------------------------------------------------------------------------------
# The CLI


def test_cli_download(serve, libsvm_dir, tmp_path, run_cli):
    result = run_cli(["datasets", "download", "a5a", "--dir", tmp_path, "--mirror", serve(libsvm_dir)])
    assert result.returncode == 0, result.stderr
    assert sha256_file(tmp_path / "a5a") == REGISTRY["a5a"].sha256
    assert str(tmp_path / "a5a") in result.stdout


def test_cli_download_error_and_list(tmp_path, run_cli):
    result = run_cli(["datasets", "download", "a5a", "--dir", tmp_path, "--mirror", CLOSED_PORT_URL])
    assert result.returncode == 2
    assert result.stderr.startswith("mpiopt: error: could not download") and "Traceback" not in result.stderr
    listing = run_cli(["datasets", "list"])
    assert listing.returncode == 0
    assert all(name in listing.stdout for name in REGISTRY) and "unverified" in listing.stdout
