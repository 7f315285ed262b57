"""Bounded integers summed as 64-bit words over real ``mpiexec`` ranks (mpiopt.compressors.lanes).

At 3 and 12 ranks: int8, int16 and int32 sums of values in [-B, B] (every rank at a bound included)
equal the int64 sums of the gathered values, whatever the padding held before, and the bytes counted
are the padded words; the int compressor's header, its redo in a wider dtype and the fill rule's
header-less sum, and the hint compressor's, are exact and identical on every rank at a d that sums as
words.
"""

import json
from pathlib import Path

import pytest

from mpilaunch import run_script
from mpiopt.compressors.lanes import LANES_FROM, padded_bytes

HERE = Path(__file__).resolve().parent
D = LANES_FROM + 5


@pytest.fixture(scope="module", params=[3, 12])
def report(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("word-sums") / "report.json"
    res = run_script(request.param, HERE / "_word_sums.py", out, timeout=180)
    assert res.returncode == 0, f"_word_sums.py failed:\n{res.stdout}\n{res.stderr}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32"])
def test_bounded_sums_as_words_are_exact(report, dtype):
    r = report[dtype]
    assert r["as_words"] and r["exact"] and r["padding_zero"]
    assert r["bytes"] == r["padded_bytes"] and r["padded_bytes"] % 8 == 0


def test_the_int_compressor_header_redo_and_fill_sums_are_exact(report):
    for label in ("auto", "redo", "fill"):
        r = report[label]
        assert r["sum_exact"] and r["mean_exact"] and r["same_everywhere"] and r["clipped"] == 0, label
    assert report["auto"]["summary"]["steps_by_wire"] == {"int8": 2}
    assert report["auto"]["bytes"] == 2 * padded_bytes(D + 3)  # two int8 steps with the header, whole words
    assert report["redo"]["summary"]["redone_steps"] == 1
    assert report["redo"]["summary"]["steps_by_wire"] == {"int16": 2}
    # fill's first integer step sets its floor, which holds it in int16 (sent without the header)
    assert report["fill"]["summary"]["steps_by_wire"] == {"float64": 1, "int16": 1}


def test_the_hint_compressor_sum_is_exact(report):
    r = report["hint"]
    assert r["sum_exact"] and r["same_everywhere"]
    assert r["bytes"] == 8 + padded_bytes(D)  # the MAX Allreduce of max |v|, then the int8 words
