"""VR-IntDIANA's feedback (``--feedback on``, its default): each rank carries its rounding error into its
next Delta_i, so the rounding noise does not pile up in directions only the regularizer curves.

Real mpiexec runs on the low-rank problem of issue 24 (sklearn's make_classification(2000, 50), two
redundant features: the data has rank 48 of 50; l2 1e-4, 4 ranks, batch 25), where the IntSGD paper's
VR-IntDIANA needs 3.7x L-SVRG's iterations; and a checkpoint's resume, which must carry the error."""

import json

import numpy as np
import pytest

from mpilaunch import run_mpi

RANKS, BATCH, TOL = 4, 25, 1e-8


@pytest.fixture(scope="module")
def low_rank(tmp_path_factory):
    """The issue's newcomer problem as 4 shards (make_classification(2000, 50, random_state=0), l2 1e-4)."""
    from sklearn.datasets import make_classification

    from mpiopt.data import preprocess

    X, y = make_classification(2000, 50, random_state=0)
    out = tmp_path_factory.mktemp("low-rank") / "shards"
    preprocess(X, y, RANKS, 1e-4, out, dataset="make_classification(2000, 50)", source_sha256=None)
    assert np.linalg.matrix_rank(X) == 48
    return out


def run(data, out, method, *options, iters=6000, extra=()):
    res = run_mpi(RANKS, ["run", "--data", data, "--method", method, "--batch", BATCH, "--tol", TOL, "--iters", iters,
                          "--seed", 0, "--log-every", 100, "--no-progress", "--out", out, *options, *extra],
                  timeout=300)
    assert res.returncode == 0, res.stderr
    return json.loads(out.read_text())


def test_the_feedback_keeps_vr_intdiana_at_l_svrgs_iterations_on_low_rank_data(low_rank, tmp_path):
    """With the feedback the default reaches the tolerance within 1.1x L-SVRG's iterations (measured:
    1196 both) with int8 every step; the paper's method (``--alpha paper --feedback off``) is cut
    off at twice L-SVRG's iterations still far from it (it needs 4373), and the paper's rule with the
    feedback keeps L-SVRG's pace too (1202)."""
    ref = run(low_rank, tmp_path / "ref.json", "l-svrg")
    assert ref["status"] == "converged"
    n = ref["iterations"]
    default = run(low_rank, tmp_path / "default.json", "vr-intdiana")
    assert default["config"]["feedback"] == "on" and default["config"]["alpha"] == "exponent"
    assert default["status"] == "converged" and default["iterations"] <= 1.1 * n, (default["iterations"], n)
    assert default["wire"]["steps_by_wire"] == {"int8": default["iterations"]}
    paper = run(low_rank, tmp_path / "paper.json", "vr-intdiana", "--alpha", "paper", "--feedback", "off",
                iters=2 * n)
    assert paper["status"] == "max_iter" and paper["history"]["dist_sq"][-1] > 1e3 * TOL
    fed = run(low_rank, tmp_path / "fed.json", "vr-intdiana", "--alpha", "paper")
    assert fed["status"] == "converged" and fed["iterations"] <= 1.1 * n, (fed["iterations"], n)


def test_a_resumed_run_carries_the_feedback_and_gives_the_same_bits(low_rank, tmp_path):
    """The error e_i is part of the checkpoint: stopped at iteration 60 and resumed, the run ends on the
    straight run's x_final bit for bit (numba's fused exchange and numpy's give the same bits too)."""
    common = ("--kernel", "numpy")
    straight = run(low_rank, tmp_path / "straight.json", "vr-intdiana", *common, iters=100)
    ckpt = ("--checkpoint-every", 30, "--checkpoint-dir", tmp_path / "ckpt")
    run(low_rank, tmp_path / "resumed.json", "vr-intdiana", *common, iters=60, extra=ckpt)
    resumed = run(low_rank, tmp_path / "resumed.json", "vr-intdiana", *common, iters=100, extra=(*ckpt, "--resume"))
    assert resumed["resumed_from"] == 60 and resumed["x_final"] == straight["x_final"]
    pytest.importorskip("numba")
    fused = run(low_rank, tmp_path / "fused.json", "vr-intdiana", "--kernel", "numba", iters=100)
    assert fused["x_final"] == straight["x_final"]


def test_feedback_is_an_option_of_the_diana_methods_only(low_rank, tmp_path):
    res = run_mpi(RANKS, ["run", "--data", low_rank, "--method", "intsgd", "--batch", BATCH, "--iters", 5,
                          "--feedback", "on", "--no-progress", "--out", tmp_path / "t.json"], timeout=120)
    assert res.returncode == 2 and "does not take option(s) --feedback" in res.stderr, res.stderr
    off = run(low_rank, tmp_path / "intdiana.json", "intdiana", iters=5)
    assert off["config"]["feedback"] == "off"  # IntDIANA keeps the paper's method
