"""mpiopt.data: reading and validating LIBSVM files, preprocessing into shards, loading shards back."""

import bz2
import gzip
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.preprocessing import normalize as sk_normalize

from mpiopt import data
from mpiopt.data import load_libsvm, load_shard, normalize_rows, preprocess, read_meta
from mpiopt.datasets import REGISTRY
from mpiopt.errors import InputError

MALFORMED_DIR = Path(__file__).resolve().parent / "data"
A5A_L2, A5A_WORKERS = 5e-4, 12
"""How conftest's a5a_shards fixture was made."""

# --------------------------------------------------------------------------------------------------
# Reading real files


def _label_counts(text: str):
    """MANIFEST's '-1:4845,+1:1569' as counts in increasing label order."""
    pairs = sorted((float(label), int(count)) for label, count in (p.split(":") for p in text.split(",")))
    return [count for _, count in pairs]


@pytest.mark.parametrize("name", ["a1a", "a5a", "a9a.t", "w8a", "mushrooms", "phishing", "madelon.t"])
def test_load_matches_manifest(libsvm_dir, manifest, name):
    row = manifest[name]
    X, y = load_libsvm(libsvm_dir / name, n_features=REGISTRY[name].n_features)
    assert isinstance(X, sp.csr_matrix) and X.dtype == np.float64 and y.dtype == np.float64
    assert X.shape == (int(row["rows"]), REGISTRY[name].n_features)
    assert X.nnz == int(row["nnz"])
    n_neg, n_pos = _label_counts(row["labels"])
    assert (y == -1).sum() == n_neg and (y == 1).sum() == n_pos


def test_n_features_default_is_largest_index(a5a_path):
    assert load_libsvm(a5a_path)[0].shape[1] == 122
    assert load_libsvm(a5a_path, n_features=123)[0].shape[1] == 123


@pytest.mark.parametrize("opener,suffix", [(gzip.open, ".gz"), (bz2.open, ".bz2")])
def test_compressed_equals_plain(a5a_path, tmp_path, opener, suffix):
    packed = tmp_path / f"a5a{suffix}"
    with opener(packed, "wb") as f:
        f.write(a5a_path.read_bytes())
    X, y = load_libsvm(a5a_path, 123)
    Xc, yc = load_libsvm(packed, 123)
    assert (X != Xc).nnz == 0 and np.array_equal(y, yc)


@pytest.mark.parametrize("labels", [(-1, 1), (0, 1), (1, 2), (2, 4), (1, -1)])
def test_two_label_values_map_to_minus_one_plus_one(tmp_path, labels):
    low, high = sorted(labels)
    path = tmp_path / "two.svm"
    path.write_text(f"{labels[0]} 1:1\n{labels[1]} 2:1\n{labels[0]} 1:2 3:1\n")
    _, y = load_libsvm(path)
    expected = [-1.0 if v == low else 1.0 for v in (labels[0], labels[1], labels[0])]
    assert y.tolist() == expected


def test_comments_blank_lines_and_crlf_are_fine(tmp_path):
    path = tmp_path / "ok.svm"
    path.write_bytes(b"# header\r\n+1 1:0.5 3:2 # note\r\n\r\n-1 2:1\r\n")
    X, y = load_libsvm(path)
    assert X.toarray().tolist() == [[0.5, 0, 2], [0, 1, 0]] and y.tolist() == [1, -1]


# --------------------------------------------------------------------------------------------------
# Malformed files: every one names the file and the first offending line

MALFORMED = [
    # file, n_features, line (None: the file as a whole), words the message must contain
    ("nonnumeric_value.svm", None, 3, "'abc'"),
    ("nonnumeric_label.svm", None, 2, "label 'yes'"),
    ("duplicate_index.svm", None, 4, "duplicate feature index 9"),
    ("decreasing_index.svm", None, 2, "3 follows 7"),
    ("zero_index.svm", None, 3, "feature index 0"),
    ("negative_index.svm", None, 2, "feature index -2"),
    ("float_index.svm", None, 2, "'1.5' is not an integer"),
    ("huge_index.svm", None, 3, "99999999999999999999"),
    ("nan_value.svm", None, 5, "'nan' of feature 3"),
    ("inf_value.svm", None, 2, "'inf' of feature 4"),
    ("overflow_value.svm", None, 2, "'1e400'"),
    ("nan_label.svm", None, 3, "label 'nan'"),
    ("truncated_value.svm", None, 3, "truncated"),
    ("truncated_token.svm", None, 2, "truncated"),
    ("missing_index.svm", None, 3, "':2'"),
    ("nul_bytes.svm", None, 2, "binary data"),
    ("binary_garbage.svm", None, 2, "binary data"),
    ("gzip_without_suffix.svm", None, 1, ".gz"),
    ("lfs_pointer.svm", None, 1, "Git LFS"),
    ("truncated.svm.gz", None, 11, "cannot decompress"),
    ("three_classes.svm", None, 4, "third class"),
    ("index_beyond.svm", 123, 3, "feature index 130 exceeds n_features=123"),
    ("one_class.svm", None, None, "two classes"),
    ("empty.svm", None, None, "no data rows"),
    ("comments_only.svm", None, None, "no data rows"),
]


@pytest.mark.parametrize("name,n_features,line,words", MALFORMED, ids=[f"{m[0]}-{m[3]}" for m in MALFORMED])
def test_malformed_file_names_file_and_line(name, n_features, line, words):
    path = MALFORMED_DIR / name
    with pytest.raises(InputError) as info:
        load_libsvm(path, n_features=n_features)
    message = str(info.value)
    where = f"{path}:{line}: " if line else f"{path}: "
    assert message.startswith(where), message
    assert words in message
    assert ";" in message, "the message should say what to do"


def test_every_malformed_file_is_tested():
    assert {p.name for p in MALFORMED_DIR.iterdir()} == {m[0] for m in MALFORMED}


@pytest.mark.parametrize("make", [lambda p: None, lambda p: p.mkdir()], ids=["missing", "directory"])
def test_unreadable_path(tmp_path, make):
    path = tmp_path / "nothing"
    make(path)
    with pytest.raises(InputError, match="nothing"):
        load_libsvm(path)


def test_n_features_must_be_positive(a5a_path):
    with pytest.raises(InputError, match="positive integer"):
        load_libsvm(a5a_path, n_features=0)


# --------------------------------------------------------------------------------------------------
# Preprocessing


def _shards(data_dir: Path, n: int):
    return [load_shard(data_dir, k, n) for k in range(n)]


def test_normalize_rows_unit_norm_and_zero_rows_stay_zero():
    X = sp.csr_matrix(np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, -2.0, 0.0]]))
    Xn = normalize_rows(X)
    assert np.allclose(np.linalg.norm(Xn.toarray(), axis=1), [1.0, 0.0, 1.0])
    assert np.allclose(Xn.toarray()[0], [0.6, 0.8, 0.0])
    assert X[0, 0] == 3.0, "the input is not modified"


def test_shards_are_contiguous_blocks_of_normalized_rows(a5a_shards, a5a_path):
    X, y = load_libsvm(a5a_path, 123)
    Xn = sk_normalize(X)
    m = 6414 // A5A_WORKERS
    for k, (A_k, b_k, meta) in enumerate(_shards(a5a_shards, A5A_WORKERS)):
        assert A_k.shape == (m, 123)
        assert abs(A_k - Xn[k * m: (k + 1) * m]).max() <= 1e-15
        assert np.array_equal(b_k, y[k * m: (k + 1) * m])
    assert np.allclose(np.linalg.norm(A_k.toarray(), axis=1), 1.0)


def test_truncation_to_a_multiple_of_workers_is_reported(a5a_shards):
    meta = read_meta(a5a_shards)
    assert meta["n_dropped"] == 6414 % A5A_WORKERS == 6
    assert meta["n_samples"] == 6414 - 6
    assert meta["n_workers"] == A5A_WORKERS and meta["l2"] == A5A_L2


def test_meta_holds_every_documented_key(a5a_shards):
    meta = read_meta(a5a_shards)
    assert set(data.META_KEYS) <= set(meta)
    assert len(meta["x_star"]) == meta["n_features"] == 123
    assert len(meta["L_workers"]) == len(meta["shard_sha256"]) == A5A_WORKERS
    assert meta["normalize"] is True and meta["shuffle"] is False
    assert meta["preprocess_seconds"] < 5


def test_output_is_readable_as_the_umask_allows(a5a_shards):
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(a5a_shards.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((a5a_shards / "meta.json").stat().st_mode) == 0o666 & ~umask


def test_shuffle_permutes_rows_with_the_seed(a5a_path, tmp_path):
    X, y = load_libsvm(a5a_path, 123)
    preprocess(X, y, 4, A5A_L2, tmp_path / "s", dataset="a5a", source_sha256=None, shuffle=True, seed=7)
    order = np.random.default_rng(7).permutation(X.shape[0])[: 6414 // 4 * 4]
    Xn = sk_normalize(X)[order]
    A = sp.vstack([A_k for A_k, _, _ in _shards(tmp_path / "s", 4)])
    assert abs(A - Xn).max() <= 1e-15
    assert np.array_equal(np.concatenate([b for _, b, _ in _shards(tmp_path / "s", 4)]), y[order])


def test_no_normalize_keeps_rows(a5a_path, tmp_path):
    X, y = load_libsvm(a5a_path, 123)
    meta = preprocess(X, y, 2, A5A_L2, tmp_path / "raw", dataset="a5a", source_sha256=None, normalize=False)
    A_0, _, _ = load_shard(tmp_path / "raw", 0, 2)
    assert (A_0 != X[: 3207]).nnz == 0 and meta["normalize"] is False


def test_same_input_gives_byte_identical_shards(a5a_shards, a5a_path, tmp_path):
    X, y = load_libsvm(a5a_path, 123)
    meta = preprocess(X, y, A5A_WORKERS, A5A_L2, tmp_path / "again", dataset="a5a", source_sha256=None)
    assert meta["shard_sha256"] == read_meta(a5a_shards)["shard_sha256"]


@pytest.mark.parametrize("kwargs,words", [
    (dict(n_workers=0), "positive integer"),
    (dict(n_workers=7000), "cannot be split over 7000 workers"),
    (dict(l2=0.0), "l2 must be"),
    (dict(l2=float("nan")), "l2 must be"),
])
def test_bad_arguments_write_nothing(a5a_path, tmp_path, kwargs, words):
    X, y = load_libsvm(a5a_path, 123)
    args = dict(X=X, y=y, n_workers=4, l2=A5A_L2, out_dir=tmp_path / "out", dataset="a5a", source_sha256=None)
    with pytest.raises(InputError, match=words):
        preprocess(**{**args, **kwargs})
    assert list(tmp_path.iterdir()) == []


def test_labels_must_be_two_classes(tmp_path):
    X = sp.csr_matrix(np.eye(4))
    with pytest.raises(InputError, match="two classes"):
        preprocess(X, np.array([1, 2, 3, 1]), 2, 1e-3, tmp_path / "out", dataset="x", source_sha256=None)


def _fail(*args, **kwargs):
    raise KeyboardInterrupt


def test_failure_midway_leaves_no_output(a5a_path, tmp_path, monkeypatch):
    """The solver runs after the shards are written; interrupting it must leave nothing behind."""
    X, y = load_libsvm(a5a_path, 123)
    monkeypatch.setattr(data, "solve_logistic", _fail)
    with pytest.raises(KeyboardInterrupt):
        preprocess(X, y, 4, A5A_L2, tmp_path / "out", dataset="a5a", source_sha256=None)
    assert list(tmp_path.iterdir()) == []


def test_failure_midway_keeps_the_previous_output(a5a_path, tmp_path, monkeypatch):
    X, y = load_libsvm(a5a_path, 123)
    before = preprocess(X, y, 4, A5A_L2, tmp_path / "out", dataset="a5a", source_sha256=None)
    monkeypatch.setattr(data, "solve_logistic", _fail)
    with pytest.raises(KeyboardInterrupt):
        preprocess(X, y, 2, A5A_L2, tmp_path / "out", dataset="a5a", source_sha256=None)
    assert read_meta(tmp_path / "out") == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_rerun_replaces_an_earlier_output(a5a_path, tmp_path):
    X, y = load_libsvm(a5a_path, 123)
    preprocess(X, y, 4, A5A_L2, tmp_path / "out", dataset="a5a", source_sha256=None)
    preprocess(X, y, 2, A5A_L2, tmp_path / "out", dataset="a5a", source_sha256=None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["meta.json", "shard_000.npz", "shard_001.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_refuses_to_replace_a_folder_of_other_files(a5a_path, tmp_path):
    X, y = load_libsvm(a5a_path, 123)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="notes.txt"):
        preprocess(X, y, 2, A5A_L2, tmp_path / "out", dataset="a5a", source_sha256=None)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------------
# Loading shards: every inconsistency is caught with a message saying what to do


@pytest.fixture
def shards(a5a_shards, tmp_path) -> Path:
    """A private copy of the a5a shards, free to damage."""
    return Path(shutil.copytree(a5a_shards, tmp_path / "a5a-12"))


def _edit_meta(folder: Path, **changes) -> None:
    """Change meta.json and seal it again (its meta_sha256 updated, as a careful forger would)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(changes)
    data.write_meta(folder, meta)


def test_load_shard_round_trip(shards):
    A, b, meta = load_shard(shards, 3, A5A_WORKERS)
    assert A.dtype == np.float64 and b.dtype == np.float64 and A.shape == (534, 123)
    assert set(np.unique(b)) <= {-1.0, 1.0}


def test_wrong_rank_count(shards):
    with pytest.raises(InputError) as info:
        load_shard(shards, 0, 4)
    assert f"{shards} was preprocessed for 12 workers but this run has 4 ranks" in str(info.value)
    assert "--workers 4" in str(info.value)


def test_missing_shard(shards):
    (shards / "shard_005.npz").unlink()
    with pytest.raises(InputError, match=r"shard_005\.npz is missing; re-run mpiopt preprocess"):
        load_shard(shards, 5, A5A_WORKERS)


def test_tampered_shard_fails_its_checksum(shards):
    path = shards / "shard_002.npz"
    content = bytearray(path.read_bytes())
    content[-200] ^= 1
    path.write_bytes(bytes(content))
    with pytest.raises(InputError, match=r"shard_002\.npz has sha256 [0-9a-f]{64} but meta.json records"):
        load_shard(shards, 2, A5A_WORKERS)


def test_corrupt_shard_with_matching_checksum(shards):
    path = shards / "shard_001.npz"
    path.write_bytes(b"not a zip file")
    checksums = read_meta(shards)["shard_sha256"]
    checksums[1] = data.sha256_file(path)
    _edit_meta(shards, shard_sha256=checksums)
    with pytest.raises(InputError, match=r"shard_001\.npz is not a readable shard"):
        load_shard(shards, 1, A5A_WORKERS)


def test_wrong_n_features(shards):
    _edit_meta(shards, n_features=124, x_star=read_meta(shards)["x_star"] + [0.0])
    with pytest.raises(InputError, match=r"holds a 534 x 123 matrix but meta.json says 534 x 124"):
        load_shard(shards, 0, A5A_WORKERS)


def test_broken_meta_json(shards):
    (shards / "meta.json").write_text('{"dataset": "a5a", ')
    with pytest.raises(InputError, match=r"meta.json is not valid JSON .*re-run mpiopt preprocess"):
        load_shard(shards, 0, A5A_WORKERS)


def test_meta_missing_keys(shards):
    meta = json.loads((shards / "meta.json").read_text())
    del meta["L_workers"], meta["x_star"]
    (shards / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="lacks L_workers, x_star"):
        read_meta(shards)


def test_missing_meta_and_missing_folder(shards, tmp_path):
    (shards / "meta.json").unlink()
    with pytest.raises(InputError, match="not a preprocessed data directory"):
        load_shard(shards, 0, A5A_WORKERS)
    with pytest.raises(InputError, match="no such data directory"):
        load_shard(tmp_path / "nowhere", 0, A5A_WORKERS)
