"""``mpiopt preprocess`` end to end in a subprocess: outputs on success, exit 2 and one line on bad input."""

import json
from pathlib import Path

import pytest

from mpiopt.data import META_KEYS, sha256_file
from mpiopt.datasets import REGISTRY

MALFORMED_DIR = Path(__file__).resolve().parent / "data"


def test_preprocess_file(a5a_path, tmp_path, run_cli):
    out = tmp_path / "a5a-12"
    result = run_cli(["preprocess", "--file", a5a_path, "--n-features", 123, "--workers", 12, "--l2", 5e-4,
                      "--out", out])
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert set(META_KEYS) <= set(meta)
    assert sorted(p.name for p in out.iterdir()) == ["meta.json"] + [f"shard_{k:03d}.npz" for k in range(12)]
    assert meta["shard_sha256"] == [sha256_file(out / f"shard_{k:03d}.npz") for k in range(12)]
    assert (meta["dataset"], meta["n_samples"], meta["n_features"], meta["n_workers"], meta["l2"]) == (
        "a5a", 6408, 123, 12, 5e-4)
    assert meta["sha256"] == REGISTRY["a5a"].sha256
    assert "dropped the last 6 row(s)" in result.stdout and "f* = " in result.stdout
    assert meta["preprocess_seconds"] < 5


def test_preprocess_registered_dataset_without_download(libsvm_dir, tmp_path, run_cli):
    """--data-dir holding the verified file: no network; l2 and n_features come from the registry."""
    out = tmp_path / "mush"
    result = run_cli(["preprocess", "--dataset", "mushrooms", "--data-dir", libsvm_dir, "--mirror",
                      "http://127.0.0.1:9", "--workers", 4, "--shuffle", "--seed", 3, "--out", out])
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["l2"], meta["n_features"], meta["shuffle"], meta["seed"], meta["n_dropped"]) == (
        6e-4, 112, True, 3, 0)
    assert "no rows dropped" in result.stdout


def test_file_without_l2_uses_the_documented_default(a5a_path, tmp_path, run_cli):
    result = run_cli(["preprocess", "--file", a5a_path, "--workers", 2, "--out", tmp_path / "o"])
    assert result.returncode == 0, result.stderr
    assert "l2 = 0.0001 (default for --file" in result.stdout
    assert json.loads((tmp_path / "o" / "meta.json").read_text())["n_features"] == 122


@pytest.mark.parametrize("args,words", [
    (["--file", MALFORMED_DIR / "index_beyond.svm", "--n-features", 123],
     f"{MALFORMED_DIR / 'index_beyond.svm'}:3: feature index 130 exceeds n_features=123"),
    (["--file", MALFORMED_DIR / "nan_value.svm"], "nan_value.svm:5:"),
    (["--file", "no/such/file.svm"], "no/such/file.svm: no such file"),
    (["--file", MALFORMED_DIR / "one_class.svm"], "one_class.svm: labels take 1 distinct value"),
    (["--dataset", "a5a", "--n-features", 123], "--n-features goes with --file"),
    (["--file", MALFORMED_DIR / "nan_value.svm", "--mirror", "http://127.0.0.1:9"], "--mirror go with --dataset"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
], ids=["beyond", "nan", "missing", "one-class", "n-features", "mirror", "unknown"])
def test_bad_input_exits_2_with_one_line(tmp_path, run_cli, args, words):
    result = run_cli(["preprocess", *args, "--workers", 2, "--out", tmp_path / "out"])
    assert result.returncode == 2
    assert result.stderr.startswith("mpiopt: error: ") and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_too_many_workers_exits_2(a5a_path, tmp_path, run_cli):
    result = run_cli(["preprocess", "--file", a5a_path, "--workers", 10000, "--out", tmp_path / "out"])
    assert result.returncode == 2 and "6414 rows cannot be split over 10000 workers" in result.stderr
    assert not (tmp_path / "out").exists()
