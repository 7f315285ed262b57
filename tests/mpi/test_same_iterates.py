"""The compressor-core redesign keeps every earned number: x_final of each method, bit for bit.

``tests/data/same_iterates_a5a_6ranks.json`` holds x_final (hex floats) of every configuration in
``_same_iterates.py`` (a5a, 6 ranks, 400 iterations, seed 3) as computed by the code before the
redesign (commit 889d26b), except ``ef-signsgd`` and ``dgc``, whose sums were moved from rank order
to worker order and whose DGC threshold sampling got its own noise stream (see the entries' note in
the test below); a change of any other entry is a change of the maths and must be explained.
"""

import json
from pathlib import Path

import pytest

from mpilaunch import run_script

HERE = Path(__file__).resolve().parent
STORED = HERE.parent / "data" / "same_iterates_a5a_6ranks.json"


@pytest.fixture(scope="module")
def now(a5a_for, tmp_path_factory):
    out = tmp_path_factory.mktemp("same-iterates") / "now.json"
    res = run_script(6, HERE / "_same_iterates.py", a5a_for(6), out, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(out.read_text())


STORED_VALUES = json.loads(STORED.read_text())


@pytest.mark.parametrize("label", sorted(STORED_VALUES))
def test_x_final_is_bit_identical_to_the_stored_run(now, label):
    assert label in now, f"{label} was not run"
    differ = [j for j, (a, b) in enumerate(zip(now[label], STORED_VALUES[label])) if a != b]
    assert not differ, f"{label}: {len(differ)} coordinates differ, first {differ[:5]}"


def test_every_configuration_run_is_stored(now):
    assert sorted(now) == sorted(STORED_VALUES)
