"""benchmarks/lm.py: the text split and its errors, the schedule, the target and the time to it, and an
end-to-end run on a tiny budget (2 gloo ranks, Tiny Shakespeare from ../shared, 4 steps per hook)
that checks the JSON's contract, the buckets, the measured bytes and the figure; --net 1gbit without a
usable bed stops with netbed's one-line message."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "lm.py"
sys.path.insert(0, str(SCRIPT.parent))
TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "text" / "tinyshakespeare.txt"
CONTRACT = {"hook", "net", "val_loss", "val_perplexity", "seconds_to_target", "steps", "bytes_per_step",
            "wire_bytes_per_step", "seconds_per_step", "compute_seconds_per_step", "seeds"}


def test_the_text_splits_90_10_by_characters(tmp_path):
    import lm

    path = tmp_path / "t.txt"
    text = "".join(chr(ord("a") + i % 7) for i in range(600)) + "\u00e9" * 400  # a 2-byte character too
    path.write_text(text, encoding="utf-8")
    train, val, vocab = lm.split_text(path)
    assert (len(train), len(val)) == (900, 100) and vocab == sorted(set(text))
    assert "".join(vocab[i] for i in np.concatenate([train, val])) == text
    slices = [lm.rank_slice(train, r, 4) for r in range(4)]
    assert [len(s) for s in slices] == [225] * 4 and np.array_equal(np.concatenate(slices), train)


def test_bad_text_is_an_input_error_naming_the_file(tmp_path):
    import lm
    from mpiopt.errors import InputError

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nsecond line \xff here\n")
    with pytest.raises(InputError, match=r"bad\.txt:2: not UTF-8"):
        lm.split_text(bad)
    short = tmp_path / "short.txt"
    short.write_text("too short for a window")
    with pytest.raises(InputError, match="short.txt: 22 characters"):
        lm.split_text(short)
    res = subprocess.run([sys.executable, str(SCRIPT), "--text", str(bad), "--json", str(tmp_path / "o.json")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "bad.txt:2: not UTF-8" in res.stderr and not (tmp_path / "o.json").exists()


def test_warmup_then_cosine_to_a_tenth():
    import lm

    f = lm.warmup_cosine(200)  # 10 warm-up steps
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(105) == pytest.approx(0.55) and f(200) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 200))


def test_target_is_fp32s_perplexity_times_1_02_read_on_the_seed_mean_curve():
    import lm

    def rec(hook, seed, curve):
        return {"hook": hook, "seed": seed, "val_loss": math.log(curve[-1][1]), "val_perplexity": curve[-1][1],
                "bytes_per_step": 1.0, "seconds_per_step": 1.0, "cpu_seconds_per_step": 1.0, "steps": 20,
                "wire_bytes_per_step": None, "buckets": 9, "curve": curve}

    records = [rec("allreduce", 0, [[1, 20.0, 10], [2, 10.0, 20]]), rec("allreduce", 1, [[3, 20.0, 10], [4, 10.0, 20]]),
               rec("intsgd", 0, [[1, 11.0, 10], [2, 10.1, 20]]), rec("intsgd", 1, [[1, 10.0, 10], [1.5, 10.1, 20]]),
               rec("fp16", 0, [[1, 30.0, 10], [2, 12.0, 20]])]
    results = {r["hook"]: r for r in lm.aggregate(records, "shm", 0.25)}
    assert results["allreduce"]["curve"] == [[2, 20.0, 10], [3, 10.0, 20]]
    assert results["allreduce"]["target_perplexity"] == pytest.approx(10.2)
    assert results["allreduce"]["seconds_to_target"] == 3
    assert results["intsgd"]["seconds_to_target"] == 1.75  # seed means 10.5 at 1 s, 10.1 at 1.75 s
    assert results["fp16"]["seconds_to_target"] is None
    assert results["intsgd"]["seeds"] == [0, 1] and results["intsgd"]["compute_seconds_per_step"] == 0.25


def test_two_ranks_end_to_end(tmp_path):
    pytest.importorskip("torch")
    if not TEXT.is_file():
        pytest.skip(f"Tiny Shakespeare not found: {TEXT}")
    out = tmp_path / "lm.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--ranks", "2", "--hooks", "allreduce", "intsgd",
                          "intsgd-exponent", "--steps", "4", "--evals", "2", "--json", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(out.read_text())
    assert report["identical_on_all_ranks"] is True and report["net"] == "shm"
    probe = report["probe"]
    assert probe["parameters"] >= 5_000_000 and probe["buckets"] >= 8 and sum(probe["bucket_elements"]) == \
        probe["parameters"]
    assert probe["compute_seconds_per_step"] > 0 and probe["allreduce_seconds_per_step"] > 0
    rows = {r["hook"]: r for r in report["results"]}
    assert sorted(rows) == ["allreduce", "intsgd", "intsgd-exponent"]
    for r in rows.values():
        assert CONTRACT <= set(r) and r["steps"] == 4 and r["seeds"] == [0] and r["buckets"] == probe["buckets"]
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"])) and 1 < r["val_perplexity"] < 80
        assert len(r["curve"]) == 2 and r["curve"][1][2] == 4
    assert rows["allreduce"]["bytes_per_step"] == 4 * probe["parameters"]
    # about a byte per parameter (int8 and the headers; a bucket redone wider on an overflow would add some)
    for hook in ("intsgd", "intsgd-exponent"):
        assert probe["parameters"] <= rows[hook]["bytes_per_step"] <= 1.25 * probe["parameters"]
    stats = {s["hook"]: s for s in report["intsgd_stats"]}  # exponent: the largest |g| fills int8's 127 // 2
    assert 63 // 2 <= stats["intsgd-exponent"]["max_abs_q"] <= 63 and stats["intsgd-exponent"]["redone_steps"] == 0
    assert rows["allreduce"]["target_perplexity"] == pytest.approx(1.02 * rows["allreduce"]["val_perplexity"])
    assert "t/fp32" in res.stdout and out.with_suffix(".png").stat().st_size > 0
    both = tmp_path / "both.png"
    res = subprocess.run([sys.executable, str(SCRIPT), "--figure", str(both), str(out), str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and both.stat().st_size > 0, res.stderr


def test_1gbit_without_a_bed_exits_2_with_netbeds_message(tmp_path):
    lock = tmp_path / "lock"
    lock.symlink_to(tmp_path / "elsewhere")
    res = subprocess.run([sys.executable, str(SCRIPT), "--net", "1gbit", "--text", str(SCRIPT),
                          "--json", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "MPIOPT_NETBED_LOCK": str(lock)})
    assert res.returncode == 2 and res.stderr.startswith("netbed: ") and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "x.json").exists()
