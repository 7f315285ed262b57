"""benchmarks/ddp_harness.py's pure parts: the hooks' turns, the time to a target, the means with a
missing counter, the hand-off options of a rank on the bed."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import ddp_harness  # noqa: E402


def test_hooks_take_turns_round_by_round_in_rotated_order():
    """Every (round, hook) runs once, all hooks' round r before round r + 1, the order rotated by one
    per round: a machine that drifts during the run weighs on every hook alike."""
    order = ddp_harness.interleaved(["a", "b", "c"], 3)
    assert order == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"), (2, "c"), (2, "a"), (2, "b")]
    assert sorted(order) == [(e, h) for e in range(3) for h in "abc"]


def test_seconds_to_is_the_first_point_that_reaches():
    curve = [[1.0, 9.0], [2.0, 5.0], [3.0, 4.0], [4.0, 6.0]]
    assert ddp_harness.seconds_to(curve, lambda ppl: ppl <= 5.0) == 2.0
    assert ddp_harness.seconds_to(curve, lambda acc: acc >= 6.0) == 1.0
    assert ddp_harness.seconds_to(curve, lambda ppl: ppl <= 3.0) is None


def test_mean_or_none():
    assert ddp_harness.mean_or_none([1.0, 3.0]) == 2.0
    assert ddp_harness.mean_or_none([1.0, None]) is None


def test_worker_options_round_trip():
    """What the driver puts on a bed rank's command line is what that rank's parser reads back."""
    p = argparse.ArgumentParser()
    ddp_harness.add_worker_options(p)
    args = argparse.Namespace(worker_out="/tmp/out-raw.json")
    back = p.parse_args(ddp_harness.worker_options(args, 3, "tcp://10.0.0.1:29500"))
    assert (back.worker_rank, back.worker_init, back.worker_out) == (3, "tcp://10.0.0.1:29500", "/tmp/out-raw.json")
    assert p.parse_args([]).worker_rank is None


def test_in_order_starts_a_bucket_only_after_the_previous_one_completed():
    """InOrder (the powersgd hook's wrapper): the second bucket's hook is not called while the first
    bucket's future is pending, is called as soon as it completes, and each returned future carries
    its own hook's result (or error)."""
    torch = pytest.importorskip("torch")
    started, pending = [], {}

    def hook(state, bucket):
        started.append(bucket)
        pending[bucket] = torch.futures.Future()
        return pending[bucket]

    chained = ddp_harness.InOrder(hook)
    first, second, third = chained(None, "b0"), chained(None, "b1"), chained(None, "b2")
    assert started == ["b0"]
    pending["b0"].set_result(torch.tensor([1.0]))
    assert first.wait().tolist() == [1.0] and started == ["b0", "b1"] and not second.done()
    pending["b1"].set_exception(RuntimeError("gloo says no"))
    assert started == ["b0", "b1", "b2"]
    with pytest.raises(RuntimeError, match="gloo says no"):
        second.wait()
    pending["b2"].set_result(torch.tensor([3.0]))
    assert third.wait().tolist() == [3.0]
    fourth = chained(None, "b3")  # the previous bucket is done: starts at once
    assert started[-1] == "b3" and not fourth.done()


def test_side_by_side_builds_every_run_first_then_plays_them_in_turns():
    log = []

    class Run:
        def __init__(self, hook):
            log.append(("build", hook))
            self.hook = hook

        def record(self):
            return {"hook": self.hook}

    records = ddp_harness.side_by_side(["a", "b"], 2, Run, lambda run, r: log.append((r, run.hook)))
    assert log == [("build", "a"), ("build", "b"), (0, "a"), (0, "b"), (1, "b"), (1, "a")]
    assert records == [{"hook": "a"}, {"hook": "b"}]


def test_byte_meter_counts_gathers_on_a_torch_without_all_gather_single():
    """setup.cfg allows torch>=2.5 and ProcessGroup.all_gather_single exists only from torch 2.13 (torch
    2.11 is what the GPU machines have): with it removed, ByteMeter is still built (it wrapped the
    method by name and failed there) and counts what this rank sends, here by ``dist.all_gather``
    (which ends in ``allgather`` on every torch) and ``dist.all_reduce``. One gloo rank in a
    subprocess; ``os._exit`` after the checks, as in tests/test_torch_imports.py."""
    pytest.importorskip("torch")
    import subprocess

    code = f"""
import os, sys, tempfile, torch, torch.distributed as dist
sys.path.insert(0, {str(Path(ddp_harness.__file__).parent)!r})
if hasattr(dist.ProcessGroup, "all_gather_single"):
    del dist.ProcessGroup.all_gather_single
import ddp_harness
dist.init_process_group("gloo", init_method="file://" + tempfile.mktemp(), rank=0, world_size=1)
meter = ddp_harness.ByteMeter()
meter.on = True
out = torch.zeros(5)
dist.all_gather([out], torch.arange(5, dtype=torch.float32))
dist.all_reduce(torch.ones(3, dtype=torch.float64))
assert out.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0], out
assert meter.bytes == 5 * 4 + 3 * 8, meter.bytes
dist.destroy_process_group()
print("counted", flush=True)
os._exit(0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "counted" in out.stdout, out.stdout + out.stderr
