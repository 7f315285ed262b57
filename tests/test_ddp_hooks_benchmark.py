"""benchmarks/ddp_hooks.py end to end on a tiny budget: 2 gloo ranks, digits, 1 epoch, 1 seed.

Checks the JSON's exact shape, that a model trains the same bits beside other hooks as alone, that
the bytes per step are measured (fp32 allreduce hands 4 bytes per parameter to all_reduce each step;
intsgd one byte per parameter plus its 3-slot header each step, and one int32 exponent per layer on
its first step (gloo sums no int16), whose integers go without the header; the loopback's counter shows about as many bytes on the wire), the time-to-accuracy fields (a curve per record, seconds to the target read from it) and that
--net 1gbit without a usable test bed stops with netbed's one-line message (exit 2) instead of
running on the wrong network. The run across the bed itself is in tests/mpi/test_netbed_run.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ddp_hooks.py"
sys.path.insert(0, str(SCRIPT.parent))
CNN_PARAMETERS = 38282
CNN_LAYERS = 8
"""Parameter tensors of the digits CNN: one alpha block, so one first-step exponent, each."""
CONTRACT = {"hook", "dataset", "test_accuracy", "bytes_per_step", "seconds_per_step", "seeds"}
TIME_TO_ACCURACY = {"curve", "target_accuracy", "seconds_to_accuracy", "reached"}


def test_two_ranks_digits_json_and_measured_bytes(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "dh.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--ranks", "2", "--epochs", "1", "--seeds", "1", "--datasets",
                          "digits", "--hooks", "allreduce", "intsgd", "--json", str(out)],
                         capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(out.read_text())
    assert report["identical_on_all_ranks"] is True
    assert report["net"] == "shm" and report["nic_tx_bytes"] is None
    rows = {r["hook"]: r for r in report["results"]}
    assert sorted(rows) == ["allreduce", "intsgd"]
    for r in rows.values():
        assert set(r) == CONTRACT | TIME_TO_ACCURACY | {"cpu_seconds_per_step", "wire_bytes_per_step"}
        assert 0 < r["cpu_seconds_per_step"] < 10 * r["seconds_per_step"]
        assert r["dataset"] == "digits" and r["seeds"] == [0] and 0 <= r["test_accuracy"] <= 1
        assert len(r["curve"]) == 1 and r["curve"][-1][1] == r["test_accuracy"]
    steps = (1347 // 2) // 32
    assert rows["allreduce"]["bytes_per_step"] == 4 * CNN_PARAMETERS
    ints = (steps * (CNN_PARAMETERS + 3) - 3 + 4 * CNN_LAYERS) / steps  # int8 + header; the exponents once
    assert ints <= rows["intsgd"]["bytes_per_step"] <= ints + 64 / steps  # + the set-up gathers' few bytes
    assert 4 * CNN_PARAMETERS / rows["intsgd"]["bytes_per_step"] >= 3.99  # the goal, on this run too
    assert report["hook_bytes"] == sum(2 * steps * r["bytes_per_step"] for r in rows.values())
    for r in rows.values():  # 2 ranks: the ring and recursive doubling both send the buffer once
        assert 0.9 * r["bytes_per_step"] <= r["wire_bytes_per_step"] <= 3 * r["bytes_per_step"], r
    target = rows["allreduce"]["test_accuracy"] - 0.005
    assert report["target_accuracy"] == {"digits": target}
    assert rows["allreduce"]["reached"] and rows["allreduce"]["seconds_to_accuracy"] == rows["allreduce"]["curve"][0][0]
    assert "s to tgt" in res.stdout
    assert out.with_suffix(".png").stat().st_size > 0


def test_a_model_trains_the_same_bits_beside_other_hooks_as_alone(tmp_path):
    """The hooks' models take turns epoch by epoch in one process: intsgd's final parameters are
    those of intsgd trained alone (same minibatches, no shared random state); a hook named twice
    is trained once."""
    pytest.importorskip("torch")
    shas = []
    for hooks in (["fp16", "intsgd"], ["intsgd", "intsgd"]):
        out = tmp_path / f"{len(hooks)}.json"
        res = subprocess.run([sys.executable, str(SCRIPT), "--ranks", "2", "--epochs", "2", "--seeds", "1",
                              "--datasets", "digits", "--hooks", *hooks, "--json", str(out)],
                             capture_output=True, text=True, timeout=240)
        assert res.returncode == 0, res.stdout + res.stderr
        shas.append(json.loads(out.read_text())["final_parameters_sha256"])
    assert len(shas[0]) == 2 and len(set(shas[0].values())) == 2 and list(shas[1]) == ["digits/intsgd/seed0"]
    assert shas[0]["digits/intsgd/seed0"] == shas[1]["digits/intsgd/seed0"]


def test_seconds_to_accuracy_is_read_from_the_seed_mean_curve():
    import ddp_hooks

    records = [{"hook": h, "dataset": "digits", "seed": s, "test_accuracy": c[-1][1], "bytes_per_step": 1.0,
                "seconds_per_step": 1.0, "cpu_seconds_per_step": 1.0, "wire_bytes_per_step": None, "curve": c}
               for h, s, c in [("allreduce", 0, [[1, 0.5], [2, 0.9]]), ("allreduce", 1, [[3, 0.7], [4, 0.9]]),
                               ("intsgd", 0, [[1, 0.8], [2, 0.88]]), ("intsgd", 1, [[1, 0.9], [2, 0.88]]),
                               ("fp16", 0, [[1, 0.5], [2, 0.6]]), ("fp16", 1, [[1, 0.5], [2, 0.6]])]]
    results = {r["hook"]: r for r in ddp_hooks.aggregate(records)}
    assert results["allreduce"]["curve"] == [[2, 0.6], [3, 0.9]]
    targets = ddp_hooks.add_time_to_accuracy(list(results.values()), None)
    assert targets == {"digits": pytest.approx(0.895)}
    assert (results["allreduce"]["seconds_to_accuracy"], results["allreduce"]["reached"]) == (3, True)
    for hook in ("intsgd", "fp16"):  # seed means 0.85 then 0.88, and 0.5 then 0.6: never 0.895
        assert (results[hook]["seconds_to_accuracy"], results[hook]["reached"]) == (None, False)
    ddp_hooks.add_time_to_accuracy(list(results.values()), 0.8)
    assert [results[h]["seconds_to_accuracy"] for h in ("allreduce", "intsgd", "fp16")] == [3, 1, None]


def test_each_hook_is_paired_with_fp16_epoch_by_epoch():
    """vs_fp16 compares each (seed, epoch)'s seconds with fp16's in the same seed and epoch: the
    median of the ratios and how many were below 1; fp16 itself, or a dataset without fp16, has none."""
    import ddp_hooks

    def rec(hook, seed, cumulative, dataset="digits"):
        return {"hook": hook, "dataset": dataset, "seed": seed, "test_accuracy": 0.9, "bytes_per_step": 1.0,
                "seconds_per_step": 1.0, "cpu_seconds_per_step": 1.0, "wire_bytes_per_step": None,
                "curve": [[c, 0.9] for c in cumulative]}

    records = [rec("fp16", 0, [1.0, 2.0, 3.0]), rec("fp16", 1, [2.0, 4.0, 6.0]),
               rec("intsgd", 0, [0.9, 2.0, 2.9]), rec("intsgd", 1, [2.2, 4.0, 5.8]),  # ratios .9 1.1 .9 / 1.1 .9 .9
               rec("intsgd", 0, [1.0, 2.0], dataset="a9a")]
    results = ddp_hooks.aggregate(records)
    ddp_hooks.add_epoch_pairs(results, records)
    by = {(r["dataset"], r["hook"]): r for r in results}
    pair = by[("digits", "intsgd")]["vs_fp16"]
    assert (pair["epochs_faster"], pair["epochs"]) == (4, 6)
    assert pair["median_epoch_ratio"] == pytest.approx(0.9)
    assert "vs_fp16" not in by[("digits", "fp16")] and "vs_fp16" not in by[("a9a", "intsgd")]


def test_1gbit_without_a_bed_exits_2_with_netbeds_message(tmp_path):
    """Not root, no tc, or (here as root) a lock that is a symbolic link: the bed is refused before
    anything runs."""
    lock = tmp_path / "lock"
    lock.symlink_to(tmp_path / "elsewhere")
    res = subprocess.run([sys.executable, str(SCRIPT), "--net", "1gbit", "--json", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=120, env={**os.environ, "MPIOPT_NETBED_LOCK": str(lock)})
    assert res.returncode == 2 and res.stderr.startswith("netbed: ") and res.stderr.count("\n") == 1, res.stderr
    assert not (tmp_path / "x.json").exists()
