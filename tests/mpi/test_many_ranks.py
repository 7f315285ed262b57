"""130 real ranks (oversubscribed): the ``auto`` wire dtype must not wrap at 128+ ranks.

At n >= 128, int8's per-rank bound floor(127 / n) is 0 and its header slots cannot count n ranks;
``auto`` used to speculate on int8 after 16 all-zero steps, the header counters wrapped (130 flags
summed to -126), the redo was skipped and every coordinate was clipped to 0. About a minute on 2 cores.
"""

import json
from pathlib import Path

from mpilaunch import run_script

HERE = Path(__file__).resolve().parent


def test_auto_at_130_ranks_is_exact_after_a_streak_of_zero_steps(tmp_path):
    out = tmp_path / "many.json"
    res = run_script(130, HERE / "_many_ranks_auto.py", out, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["n"] == 130
    assert r["x"] == [-10.0 * 5] * 8  # exact SGD: mean of alpha v = 10, lr = alpha = 1, five steps
    assert r["clipped"] == 0
    assert "int8" not in r["steps_by_wire"] and r["wire_dtype_next"] == "int16"
