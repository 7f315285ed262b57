"""``mpiopt plot``: seeds of one configuration form one band; files and errors are user-friendly."""

import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

import mpiopt
from mpiopt.errors import InputError
from mpiopt.plot import convergence_figure, error_column, group_by_config, load_traces, plot_traces
from mpiopt.problems import LogisticProblem


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    """Real traces: sgd with 3 seeds and gd, written as JSON files."""
    data = load_breast_cancer()
    problem = LogisticProblem(data.data / np.linalg.norm(data.data, axis=1, keepdims=True), 2.0 * data.target - 1, 1e-2)
    folder = tmp_path_factory.mktemp("traces")
    paths = []
    for method, seed in [("sgd", 0), ("sgd", 1), ("sgd", 2), ("gd", 0)]:
        res = mpiopt.minimize(problem, method, iters=50, seed=seed, header={"dataset": "bc"},
                              **({} if method == "gd" else {"batch": 4}))
        path = folder / f"{method}-{seed}.json"
        path.write_text(json.dumps(res.trace))
        paths.append(str(path))
    return paths


def test_seeds_of_one_config_are_one_group(traces):
    groups = group_by_config(load_traces(traces))
    assert {label: len(members) for label, members in groups.items()} == {"sgd": 3, "gd": 1}


def test_error_axis_falls_back_to_gradient_norm_without_f_star(traces):
    assert error_column(load_traces(traces)) == ("grad_norm_sq", "||∇f(x)||²")


@pytest.mark.parametrize("suffix", ["png", "pdf"])
def test_cli_writes_the_figure(traces, tmp_path, suffix):
    out = tmp_path / f"fig.{suffix}"
    res = subprocess.run([sys.executable, "-m", "mpiopt", "plot", *traces, "--out", out], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size > 10_000


def test_a_file_that_is_not_a_trace_is_named(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="bad.json: not a trace JSON file"):
        plot_traces([str(bad)], str(tmp_path / "x.png"))
    res = subprocess.run([sys.executable, "-m", "mpiopt", "plot", str(tmp_path / "missing.json"), "--out",
                          str(tmp_path / "x.png")], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("mpiopt: error:") and "missing.json" in res.stderr


def test_an_unknown_figure_format_is_an_input_error(traces, tmp_path):
    with pytest.raises(InputError, match="--out"):
        plot_traces(traces, str(tmp_path / "fig.nope"))


def test_a_missing_option_and_a_null_one_are_the_same_config(traces, tmp_path):
    loaded = load_traces(traces[:2])
    loaded[1]["config"]["block_starts"] = None
    assert [len(m) for m in group_by_config(loaded).values()] == [2]


def test_a_trace_label_names_its_line_and_keeps_seed_bands(traces):
    loaded = load_traces(traces)
    for trace in loaded[:3]:
        trace["label"] = "my sgd"
    loaded[3]["label"] = "my gd"
    groups = group_by_config(loaded)
    assert {label: len(members) for label, members in groups.items()} == {"my sgd": 3, "my gd": 1}


def test_same_method_lines_are_told_apart_by_their_options_unless_labelled(traces):
    loaded = load_traces(traces[:2])
    loaded[1]["config"]["lr"] = 0.25
    assert set(group_by_config(loaded)) == {f"sgd (lr={loaded[0]['config']['lr']:.3g})", "sgd (lr=0.25)"}
    loaded[1]["label"] = "sgd, big steps"
    assert set(group_by_config(loaded)) == {"sgd", "sgd, big steps"}


def test_labels_given_by_path_override_the_traces(traces, tmp_path):
    loaded = load_traces(traces, labels={traces[3]: "full gradient"})
    assert list(group_by_config(loaded)) == ["sgd", "full gradient"]
    out = plot_traces(traces, str(tmp_path / "fig.png"), labels={traces[3]: "full gradient"})
    assert out.stat().st_size > 10_000


def test_the_first_configuration_is_drawn_over_the_others(traces):
    """A method whose line coincides with a later one's (equal iterations) stays visible."""
    import matplotlib.pyplot as plt

    fig = convergence_figure(traces)
    try:
        for ax in fig.axes:
            lines = {line.get_label(): line.get_zorder() for line in ax.get_lines()}
            assert lines["sgd (3 seeds)"] > lines["gd"]
        assert [t.get_text() for t in fig.axes[2].get_legend().get_texts()] == ["sgd (3 seeds)", "gd"]
        assert [ax.get_xlabel() for ax in fig.axes[:3]] == ["iterations", "bits sent per rank", "seconds"]
    finally:
        plt.close(fig)
