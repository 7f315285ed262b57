"""Preprocessing and loading hostile input: huge implied sizes, edited meta.json, forged shard headers,
SIGTERM, ``--out .``, huge tokens, and an existing output. Real files and real subprocesses."""

import io
import json
import resource
import signal
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from mpiopt import data
from mpiopt.data import load_libsvm, load_shard, read_meta
from mpiopt.errors import InputError

from test_data import _edit_meta, shards  # noqa: F401 - a helper and a fixture (a private copy of a5a-12)

REPO = Path(__file__).resolve().parents[1]


def mpiopt_cli(*args, cwd=REPO, limit_bytes=None) -> subprocess.CompletedProcess:
    """``python -m mpiopt ARGS``; ``limit_bytes`` caps the child's address space (RLIMIT_AS)."""
    limit = (lambda: resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))) if limit_bytes else None
    return subprocess.run([sys.executable, "-m", "mpiopt", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, preexec_fn=limit)


def one_error_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith("mpiopt: error: ") and res.stderr.count("\n") == 1, res.stderr
    return res.stderr


@pytest.fixture
def huge_index_file(tmp_path) -> Path:
    path = tmp_path / "tiny.svm"
    path.write_text("+1 1:1\n-1 2:1\n+1 3:1\n-1 2147483647:1\n")
    return path


# --------------------------------------------------------------------------------------------------
# 4. sizes implied by a tiny file


def test_a_huge_index_is_refused_before_allocating(huge_index_file, tmp_path):
    err = one_error_line(mpiopt_cli("preprocess", "--file", huge_index_file, "--workers", 2, "--out", tmp_path / "o"))
    assert "the largest feature index is 2147483647, more than --max-features 10000000" in err
    assert "takes 16 GiB" in err and "pass --max-features 2147483647" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.svm"]


def test_a_huge_n_features_is_refused(a5a_path, tmp_path):
    err = one_error_line(mpiopt_cli("preprocess", "--file", a5a_path, "--n-features", 2_000_000_000, "--workers", 2,
                                    "--out", tmp_path / "o"))
    assert "--n-features is 2000000000, more than --max-features 10000000" in err


def test_running_out_of_memory_is_a_clear_error(huge_index_file, tmp_path):
    res = mpiopt_cli("preprocess", "--file", huge_index_file, "--workers", 2, "--max-features", 3_000_000_000,
                     "--out", tmp_path / "o", limit_bytes=4 << 30)
    assert one_error_line(res).startswith(f"mpiopt: error: not enough memory to preprocess {huge_index_file}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.svm"]


# --------------------------------------------------------------------------------------------------
# 6. meta.json values


def test_an_edited_f_star_is_detected(shards):
    meta = json.loads((shards / "meta.json").read_text())
    meta["f_star"] = 0.25
    (shards / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"meta.json was changed after mpiopt preprocess wrote it .*re-run"):
        read_meta(shards)


@pytest.mark.parametrize("changes, message", [
    ({"L_workers": []}, "L_workers must be a list of 12 finite numbers > 0 (one per worker), got '[]'"),
    ({"x_star": [0.0] * 5}, "x_star must be a list of 123 finite numbers (one per feature), got '[0.0, 0.0"),
    ({"l2": "abc"}, "l2 must be a finite number > 0, got '\"abc\"'"),
    ({"f_star": None}, "f_star must be a finite number, got 'null'"),
    ({"n_workers": True}, "n_workers must be a positive integer, got 'true'"),
    ({"shard_sha256": ["x"] * 12}, "shard_sha256 must be a list of 12 sha256 hex strings"),
])
def test_meta_values_are_checked_even_when_resealed(shards, changes, message):
    _edit_meta(shards, **changes)
    with pytest.raises(InputError) as info:
        load_shard(shards, 0, 12)
    assert message in str(info.value) and str(info.value).endswith("re-run mpiopt preprocess")


def test_a_huge_value_in_meta_is_quoted_short(shards):
    _edit_meta(shards, dataset="a" * 1_000_000)
    _edit_meta(shards, L_workers="b" * 1_000_000)
    with pytest.raises(InputError) as info:
        read_meta(shards)
    assert len(str(info.value)) < 600 and "(1000002 characters)" in str(info.value)


# --------------------------------------------------------------------------------------------------
# 7. shard headers


def _forge_labels_header(path: Path, shape) -> None:
    """Rewrite the shard with labels.npy's header claiming ``shape`` (its data bytes unchanged)."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    labels = np.load(io.BytesIO(members["labels.npy"]))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    members["labels.npy"] = header.getvalue() + labels.tobytes()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def test_a_shard_header_claiming_8_tib_is_refused_before_loading(shards):
    _forge_labels_header(shards / "shard_000.npz", (2**40,))
    checksums = read_meta(shards)["shard_sha256"]
    checksums[0] = data.sha256_file(shards / "shard_000.npz")
    _edit_meta(shards, shard_sha256=checksums)
    with pytest.raises(InputError, match=r"shard_000.npz: labels.npy declares shape \(1099511627776,\) of float64 "
                                         r"\(8796093022208 bytes\) but holds 4272 bytes; the shard is damaged"):
        load_shard(shards, 0, 12)


def test_a_shard_header_with_the_wrong_row_count_is_refused(shards):
    _forge_labels_header(shards / "shard_003.npz", (267, 2))
    checksums = read_meta(shards)["shard_sha256"]
    checksums[3] = data.sha256_file(shards / "shard_003.npz")
    _edit_meta(shards, shard_sha256=checksums)
    with pytest.raises(InputError, match=r"labels.npy has shape \(267, 2\) where 534 rows \(meta.json\) need \(534,\)"):
        load_shard(shards, 3, 12)


# --------------------------------------------------------------------------------------------------
# 9. SIGTERM and --out .

SIGTERM_MIDWAY = textwrap.dedent("""
    import os, signal, sys
    from mpiopt import data

    def terminated(*args, **kwargs):  # the shards are written; now the job scheduler sends SIGTERM
        os.kill(os.getpid(), signal.SIGTERM)

    data.solve_logistic = terminated
    X, y = data.load_libsvm(sys.argv[1], 123)
    data.preprocess(X, y, 4, 5e-4, sys.argv[2], dataset="a5a", source_sha256=None)
""")


def test_sigterm_midway_leaves_no_temporary_folder(a5a_path, tmp_path):
    res = subprocess.run([sys.executable, "-c", SIGTERM_MIDWAY, str(a5a_path), str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 128 + signal.SIGTERM, res.stderr
    assert list(tmp_path.iterdir()) == []


def test_out_dot_is_refused(a5a_path, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    err = one_error_line(mpiopt_cli("preprocess", "--file", a5a_path, "--workers", 2, "--out", ".",
                                    cwd=work))
    assert err == ("mpiopt: error: --out '.' is the current directory or one above it, which cannot be replaced; "
                   "give a new folder, e.g. --out data/NAME-WORKERS\n")
    assert [p.name for p in work.iterdir()] == ["notes.txt"] and [p.name for p in tmp_path.iterdir()] == ["work"]


# --------------------------------------------------------------------------------------------------
# 11. huge tokens are quoted short


def test_a_30_mb_token_is_quoted_short(tmp_path):
    path = tmp_path / "huge.svm"
    path.write_text("+1 1:1\n-1 1:" + "x" * 30_000_000 + "\n")
    with pytest.raises(InputError) as info:
        load_libsvm(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: value 'xxxx") and "... (30000000 characters) of feature 1" in message
    assert len(message) < 600


# --------------------------------------------------------------------------------------------------
# issue 15: preprocess --force


def test_preprocess_keeps_an_existing_output_unless_force(a5a_path, tmp_path):
    out = tmp_path / "a5a-2"
    args = ("preprocess", "--file", a5a_path, "--n-features", 123, "--workers", 2, "--out", out)
    assert mpiopt_cli(*args).returncode == 0
    before = (out / "meta.json").read_text()
    err = one_error_line(mpiopt_cli(*args[:-3], 4, "--out", out))
    assert err == (f"mpiopt: error: --out {out} already exists and is not empty; pass --force to replace an "
                   f"earlier output there, or choose another --out\n")
    assert (out / "meta.json").read_text() == before
    assert mpiopt_cli(*args[:-3], 4, "--out", out, "--force").returncode == 0
    assert read_meta(out)["n_workers"] == 4
