"""``mpiexec -n 4 mpiopt run --plugin examples/custom_compressor.py --compressor random-drop`` (issue 25):
every rank imports the plugin, so the compressor and its --keep flag work across a real job."""

import json
from pathlib import Path

from sklearn.datasets import load_breast_cancer

from mpilaunch import run_mpi

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_compressor.py"


def test_a_plugin_compressor_runs_on_4_ranks(tmp_path):
    from mpiopt.data import preprocess

    cancer = load_breast_cancer()
    preprocess(cancer.data, 2.0 * cancer.target - 1.0, 4, 1e-3, tmp_path / "bc", dataset="bc", source_sha256=None)
    out = tmp_path / "random-drop.json"
    res = run_mpi(4, ["run", "--plugin", EXAMPLE, "--data", tmp_path / "bc", "--method", "sgd", "--compressor",
                      "random-drop", "--keep", 0.5, "--iters", 200, "--batch", 8, "--no-progress", "--out", out])
    assert res.returncode == 0, res.stderr
    trace = json.loads(out.read_text())
    assert trace["config"]["compressor"] == "random-drop" and trace["config"]["keep"] == 0.5
    assert trace["config"]["omega"] == 1.0 and trace["status"] == "max_iter"
    h = trace["history"]
    assert h["f_gap"][-1] < 0.5 * h["f_gap"][0]
    # about half of the 31 float64 coordinates travel each step (one Allgatherv of the kept values)
    assert 0.3 * 200 * 31 * 8 < h["wire_bytes"][-1] < 0.7 * 200 * 31 * 8
