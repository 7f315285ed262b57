"""fp16, bf16, topk and dgc exchanges over a real ``mpiexec -n 3`` (see _new_compressors.py for the
references): means bit for bit against numpy, the same on every rank and in reversed rank order,
bytes counted = bytes on the wire, DGC's count along its warm-up, and a NaN on one rank stopping all;
fp16 and bf16's chunked sums on 2, 4 and 6 ranks (_half_sum.py)."""

import json
from pathlib import Path

import pytest
from mpilaunch import run_script

HERE = Path(__file__).resolve().parent


def test_new_compressors_on_three_ranks(tmp_path):
    out = tmp_path / "facts.json"
    res = run_script(3, HERE / "_new_compressors.py", out, timeout=240)
    assert res.returncode == 0, f"mpiexec failed:\n{res.stdout}\n{res.stderr}"
    facts = json.loads(out.read_text())
    assert len(facts) > 50
    failed = {fact: got for fact, got in facts.items() if got is not True}
    assert not failed, json.dumps(failed, indent=1)


@pytest.mark.parametrize("ranks", [2, 4, 6])
def test_fp16_and_bf16_sum_by_chunks_on_2_to_6_ranks(tmp_path, ranks):
    """fp16 and bf16 (both codecs): the reference means bit for bit, within the format's rounding of the
    float64 mean, the same on every rank and in reversed rank order, d < n and d % n != 0 (padding),
    bytes = 2 n ceil(d / n), exchange_update = exchange + apply_step, a NaN / inf / out-of-range
    value on one rank stopping every rank with that rank named, and the raw-word Alltoall itself."""
    out = tmp_path / "facts.json"
    res = run_script(ranks, HERE / "_half_sum.py", out, timeout=300)
    assert res.returncode == 0, f"mpiexec failed:\n{res.stdout}\n{res.stderr}"
    facts = json.loads(out.read_text())
    assert len(facts) > 200
    failed = {fact: got for fact, got in facts.items() if got is not True}
    assert not failed, json.dumps(failed, indent=1)
