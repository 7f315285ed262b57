"""benchmarks/ddp_hooks.py end to end on a tiny budget: 2 gloo ranks, digits, 1 epoch, 1 seed.

Checks the JSON's exact shape, that the bytes per step are measured (fp32 allreduce hands 4 bytes
per parameter to all_reduce each step; intsgd about a quarter of that plus its float64 first step)
and that --net 1gbit stops with a message instead of running on the wrong network."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ddp_hooks.py"
CNN_PARAMETERS = 38282


def test_two_ranks_digits_json_and_measured_bytes(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "dh.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--ranks", "2", "--epochs", "1", "--seeds", "1", "--datasets",
                          "digits", "--hooks", "allreduce", "intsgd", "--json", str(out)],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(out.read_text())
    assert report["identical_on_all_ranks"] is True
    rows = {r["hook"]: r for r in report["results"]}
    assert sorted(rows) == ["allreduce", "intsgd"]
    for r in rows.values():
        assert set(r) == {"hook", "dataset", "test_accuracy", "bytes_per_step", "seconds_per_step", "seeds"}
        assert r["dataset"] == "digits" and r["seeds"] == [0] and 0 <= r["test_accuracy"] <= 1
    assert rows["allreduce"]["bytes_per_step"] == 4 * CNN_PARAMETERS
    steps = (1347 // 2) // 32
    ints = ((steps - 1) * (CNN_PARAMETERS + 3) + 8 * CNN_PARAMETERS) / steps  # int8 + header, float64 first step
    assert ints <= rows["intsgd"]["bytes_per_step"] <= ints + 64 / steps  # + the set-up gathers' few bytes
    assert out.with_suffix(".png").stat().st_size > 0


def test_1gbit_is_refused_with_a_message(tmp_path):
    res = subprocess.run([sys.executable, str(SCRIPT), "--net", "1gbit", "--json", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "netbed" in res.stderr, res.stderr
