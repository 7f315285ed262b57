"""``mpiopt run`` over the compressor core: flags from the registry, composition errors, ef-sgd."""

import json

import pytest

from mpilaunch import run_mpi
from mpiopt.compressors import REGISTRY


def test_help_lists_every_registered_compressor_and_its_options(run_cli):
    res = run_cli(["run", "--help"])
    assert res.returncode == 0
    text = " ".join(res.stdout.split())
    assert "--compressor {" + ",".join(REGISTRY) + "}" in text
    for cls in REGISTRY.values():
        for option in cls.options:
            if option.cli:
                assert option.flag in text, (cls.name, option.flag)
    assert "--method" in text and "ef-sgd" in text


def test_diana_with_a_biased_compressor_exits_2_naming_ef_sgd(a5a_for, tmp_path):
    res = run_mpi(2, ["run", "--data", a5a_for(2), "--method", "diana", "--compressor", "sign", "--iters", 5,
                      "--no-progress", "--out", tmp_path / "t.json"], timeout=60)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("mpiopt: error:")]
    assert lines == ["mpiopt: error: method 'diana' needs an unbiased compressor and 'sign' is biased; "
                     "use ef-sgd --compressor sign (error feedback) instead"], res.stderr


def test_intdiana_option_error_names_intdiana(a5a_for, tmp_path):
    res = run_mpi(2, ["run", "--data", a5a_for(2), "--method", "intdiana", "--levels", 4, "--iters", 5,
                      "--no-progress", "--out", tmp_path / "t.json"], timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("method 'intdiana' with compressor int does not use option(s) --levels") == 1, res.stderr
    assert "method 'diana'" not in res.stderr


@pytest.mark.parametrize("compressor", ["sign", "topk", "nat"])
def test_ef_sgd_runs_with_any_compressor_and_records_it(a5a_for, tmp_path, compressor):
    out = tmp_path / "t.json"
    res = run_mpi(2, ["run", "--data", a5a_for(2), "--method", "ef-sgd", "--compressor", compressor, "--iters", 200,
                      "--batch", 16, "--no-progress", "--out", out], timeout=60)
    assert res.returncode == 0, res.stderr
    trace = json.loads(out.read_text())
    assert trace["config"]["compressor"] == compressor and trace["wire"]["compressor"] == compressor
    assert trace["history"]["f_gap"][-1] < 0.5 * trace["history"]["f_gap"][0]
    assert trace["compile_seconds"] >= 0
