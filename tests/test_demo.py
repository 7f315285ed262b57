"""``python -m mpiopt.demo compare``: the demo's sentence is computed from the traces it reads."""

import json
import re
import subprocess
import sys

import numpy as np
from sklearn.datasets import load_breast_cancer

import mpiopt
from mpiopt.demo import bits_to_reach
from mpiopt.problems import LogisticProblem


def test_compare_reads_its_own_result(tmp_path):
    data = load_breast_cancer()
    A = data.data / np.linalg.norm(data.data, axis=1, keepdims=True)
    problem = LogisticProblem(A, 2.0 * data.target - 1.0, l2=1e-2)
    f_star = mpiopt.minimize(problem, "gd", iters=3000, tol=1e-20).fun
    paths = []
    for method in ("gd", "l-svrg", "vr-intdiana"):
        res = mpiopt.minimize(problem, method, iters=300, f_star=f_star, **({} if method == "gd" else {"batch": 8}))
        paths.append(tmp_path / f"{method}.json")
        paths[-1].write_text(json.dumps(res.trace))
    out = subprocess.run([sys.executable, "-m", "mpiopt.demo", "compare", *paths], capture_output=True, text=True,
                         check=True).stdout
    header, *rows, sentence = out.strip().splitlines()
    assert "bits sent per rank" in header and [r.split()[0] for r in rows] == ["gd", "l-svrg", "vr-intdiana"]
    ratio, target = re.fullmatch(r"vr-intdiana sent (\S+)x fewer bits than l-svrg to reach the same accuracy "
                                 r"\(f\(x\) - f\* <= (\S+)\), as the middle panel of the figure shows\.",
                                 sentence).groups()
    traces = [json.loads(p.read_text()) for p in paths]
    exact = max(t["history"]["f_gap"][-1] for t in traces[1:])
    assert float(target) == float(f"{exact:.1e}")
    expected = bits_to_reach(traces[1], "f_gap", exact) / bits_to_reach(traces[2], "f_gap", exact)
    assert float(ratio) == round(expected, 1) and expected > 1
