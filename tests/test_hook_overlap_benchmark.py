"""Smoke test of benchmarks/hook_overlap.py: a tiny ``step`` run on 2 gloo ranks writes the JSON it
documents (every hook timed, exposed seconds against the no-communication hook)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "hook_overlap.py"


def test_step_writes_every_hook(tmp_path):
    out = tmp_path / "step.json"
    proc = subprocess.run([sys.executable, str(BENCH), "step", "--ranks", "2", "--width", "64", "--layers", "3",
                           "--bucket-mb", "0.01", "--steps", "2", "--warmup", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(out.read_text())
    hooks = {r["hook"]: r for r in res["results"]}
    assert set(hooks) == {"none", "fp32", "fp16", "intsgd overlapped", "intsgd synchronous"}
    assert hooks["none"]["exposed_seconds"] == 0.0 and res["buckets"] >= 2 and res["ranks"] == 2
    for r in hooks.values():
        assert r["seconds_per_step"] > 0 and r["steps"] == 2
        assert r["exposed_seconds"] == pytest.approx(r["seconds_per_step"] - hooks["none"]["seconds_per_step"])
        assert r["cpu_seconds_per_step"] > 0
        assert r["cpu_busy"] == pytest.approx(r["cpu_seconds_per_step"] / (r["seconds_per_step"] * res["cores"]))
    assert len(res["load_average_before"]) == 3
