"""``mpiopt plot`` on malformed traces names the file (exit 2, one line); ``--metric`` picks the error axis."""

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

import mpiopt
from mpiopt.errors import InputError
from mpiopt.plot import error_column, load_traces, plot_traces
from mpiopt.problems import LogisticProblem


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """A real gd trace that knows x* (so dist_sq) but not f*."""
    data = load_breast_cancer()
    problem = LogisticProblem(data.data / np.linalg.norm(data.data, axis=1, keepdims=True), 2.0 * data.target - 1, 1e-2)
    x_star = mpiopt.minimize(problem, "gd", iters=2000).x
    return mpiopt.minimize(problem, "gd", iters=20, x_star=x_star).trace


def plot(*args):
    return subprocess.run([sys.executable, "-m", "mpiopt", "plot", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.update(history=[1, 2]), "'history' must be an object of columns, got '[1, 2]'"),
    (lambda t: t["history"].update(f_gap="abc"), "history column 'f_gap' must be a list of numbers (null where "
                                                 "unknown), got '\"abc\"'"),
    (lambda t: t["history"]["seconds"].__setitem__(3, "x"), "history column 'seconds' must be a list of numbers"),
    (lambda t: t["history"].pop("iteration"), "history has no 'iteration' column"),
    (lambda t: t.update(method=5), "'method' must be a string, got '5'"),
    (lambda t: t.update(config=[]), "'config' must be an object, got '[]'"),
    (lambda t: t.update(label=["a"]), "'label' must be a string, got '[\"a\"]'"),
])
def test_a_malformed_trace_is_named(trace, tmp_path, edit, message):
    bad = json.loads(json.dumps(trace))
    edit(bad)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError) as info:
        plot_traces([str(path)], str(tmp_path / "fig.png"))
    assert str(info.value).startswith(f"{path}: {message}")
    assert not (tmp_path / "fig.png").exists()


def test_the_cli_reports_a_malformed_trace_in_one_line(trace, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**trace, "history": {**trace["history"], "wire_bytes": {"a": 1}}}))
    res = plot(path, "--out", tmp_path / "fig.png")
    assert res.returncode == 2
    assert res.stderr == (f"mpiopt: error: {path}: history column 'wire_bytes' must be a list of numbers (null where "
                          f"unknown), got '{{\"a\": 1}}'; is this a trace written by 'mpiopt run'?\n")


def test_metric_chooses_the_error_axis(trace, tmp_path):
    path = tmp_path / "gd.json"
    path.write_text(json.dumps(trace))
    traces = load_traces([str(path)])
    assert error_column(traces) == ("dist_sq", "||x - x*||²")
    assert error_column(traces, "grad_norm_sq") == ("grad_norm_sq", "||∇f(x)||²")
    assert plot(path, "--metric", "grad_norm_sq", "--out", tmp_path / "g.png").returncode == 0
    res = plot(path, "--metric", "f_gap", "--out", tmp_path / "f.png")
    assert res.returncode == 2
    assert res.stderr == (f"mpiopt: error: {path} has no f_gap values (its run did not know f*); choose another "
                          f"--metric, or auto\n")
