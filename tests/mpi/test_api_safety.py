"""The Python API cannot go silently wrong (issue 15): in one process and over real ``mpiexec -n 2``.

* a problem returning new gradient arrays instead of filling ``out=`` gives the same iterates as one
  filling it (every method); a wrongly shaped gradient or ``loss_and_grad`` result is a clear error;
* ranks whose problems disagree on ``dim``, and a wrongly shaped ``x_star``, are clear errors;
* a run whose loss explodes stops as 'diverged' (``mpiopt run`` exits 1 with one error line and
  still writes the trace); a ``tol`` not reached is warned about;
* the torch optimizers make the replicas equal when built, and refuse bfloat16 with a clear error.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

import mpiopt
from mpiopt.errors import InputError
from mpiopt.problems.base import CheckedProblem
from _api_safety import METHODS, LeastSquares, data, same_x  # noqa: E402
from mpilaunch import run_script  # noqa: E402

HERE = Path(__file__).resolve().parent


def mpi_report(check: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{check}.json"
    res = run_script(2, HERE / "_api_safety.py", check, out, timeout=240)
    assert res.returncode == 0, f"_api_safety.py {check} failed:\n{res.stdout}\n{res.stderr}"
    report = json.loads(out.read_text())
    assert report["n_ranks"] == 2
    return report


@pytest.mark.parametrize("method", METHODS)
def test_returned_arrays_give_the_same_iterates(method):
    assert same_x(method, rank=0)


def test_returned_arrays_give_the_same_iterates_on_two_ranks(tmp_path):
    report = mpi_report("returns", tmp_path)
    assert all(report[f"returns/{m}"] for m in METHODS), report


def test_a_problem_filling_out_goes_through_unchanged():
    problem = LeastSquares(*data(0), fills_out=True)
    out = np.empty(problem.dim)
    assert CheckedProblem(problem).grad(np.zeros(problem.dim), out=out) is out
    assert mpiopt.problems.base.checked(mpiopt.problems.LogisticProblem(np.eye(2), np.ones(2), 0.1)).__class__ \
        is mpiopt.problems.LogisticProblem


class _WrongShape(LeastSquares):
    def grad(self, x, out=None):
        return np.zeros(self.dim + 1)


class _TupleLossAndGrad(LeastSquares):
    def loss_and_grad(self, x, out):
        return self.loss(x), self.grad(x)


@pytest.mark.parametrize("cls, match", [(_WrongShape, r"grad returned an array of shape \(9,\), expected \(8,\)"),
                                        (_TupleLossAndGrad, "must return f_i\\(x\\) as a number")])
def test_wrong_results_of_the_protocol_are_clear_errors(cls, match):
    with pytest.raises(InputError, match=match):
        mpiopt.minimize(cls(*data(0), fills_out=False), "gd", iters=2)


def test_ranks_with_different_dims_are_named(tmp_path):
    report = mpi_report("dim", tmp_path)
    assert report["dim"] == ("the ranks' problems disagree on dim: dim 5 on rank(s) [0]; dim 6 on rank(s) [1]. "
                             "Every rank's problem must have the same number of coordinates (each rank holds its "
                             "own samples of one model)")
    assert report["dim/collective"] is True


def test_wrongly_shaped_x_star_is_a_clear_error():
    with pytest.raises(InputError, match=r"x_star has shape \(3,\), expected \(8,\)"):
        mpiopt.minimize(LeastSquares(*data(0), fills_out=True), "gd", iters=2, x_star=np.zeros(3))


def test_an_exploding_loss_stops_as_diverged():
    res = mpiopt.minimize(LeastSquares(*data(0), fills_out=True), "gd", iters=1000, lr=10.0)
    assert res.status == "diverged" and not res.success and res.nit < 20
    assert res.message.startswith("diverged: the loss grew from ") and "smaller step size" in res.message
    assert res.trace["status"] == "diverged"


def test_tol_not_reached_is_warned(capsys):
    res = mpiopt.minimize(LeastSquares(*data(0), fills_out=True), "gd", iters=5, tol=1e-12)
    assert res.status == "max_iter"
    warning = "tol=1e-12 not reached in 5 iterations (||grad f||^2 = "
    assert warning in capsys.readouterr().err
    assert res.trace["warnings"][0].startswith(warning)


def test_cli_exits_1_on_divergence_and_writes_the_trace(tmp_path, run_cli):
    from mpiopt.data import preprocess

    cancer = load_breast_cancer()
    preprocess(cancer.data, 2.0 * cancer.target - 1.0, 1, 1e-3, tmp_path / "bc", dataset="bc", source_sha256=None)
    out = tmp_path / "gd.json"
    res = run_cli(["run", "--data", tmp_path / "bc", "--method", "gd", "--lr", "1e4", "--iters", "200",
                   "--no-progress", "--out", out])
    assert res.returncode == 1, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("mpiopt: error:")]
    assert len(errors) == 1 and errors[0].startswith("mpiopt: error: diverged: the loss grew from"), res.stderr
    assert json.loads(out.read_text())["status"] == "diverged"


def test_torch_replicas_are_equal_from_the_start(tmp_path):
    pytest.importorskip("torch")
    report = mpi_report("torch", tmp_path)
    assert report["torch/built"] is True and report["torch/stepped"] is True


def test_torch_bfloat16_is_a_clear_error():
    torch = pytest.importorskip("torch")
    import mpiopt.torch as mt

    model = torch.nn.Linear(3, 1).to(torch.bfloat16)
    with pytest.raises(ValueError, match=r"IntSGD takes float16, float32 or float64 parameters, got torch.bfloat16"):
        mt.IntSGD(model.parameters(), lr=0.1)


def test_torch_optimizers_name_the_devices_they_run_on():
    """A tensor on a device with no array module is a clear error; the optimizers that wrap numpy
    methods say they run on CPU tensors and which optimizers take GPU models."""
    torch = pytest.importorskip("torch")
    import mpiopt.torch as mt

    with pytest.raises(TypeError, match=r"no array module for tensors on meta; use CPU or CUDA tensors"):
        mt.IntSGD(torch.nn.Linear(3, 1, device="meta").parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"DGC runs on CPU tensors \(it wraps the numpy method 'dgc'\); the model "
                                         r"is on meta: on a GPU use SGD, IntSGD, HintSGD, NatSGD, QSGD"):
        mt.DGC(torch.nn.Linear(3, 1, device="meta").parameters(), lr=0.1)


def test_ranks_that_read_different_meta_files_stop_with_one_message(tmp_path):
    """Two 'hosts' with different preprocessings (another --l2) at the same path: an MPMD job whose
    rank 1 is given the other folder. Each shard matches its own meta.json; the seal comparison stops it."""
    import subprocess
    import sys

    from mpilaunch import mpiexec_path
    from mpiopt import launch
    from mpiopt.data import preprocess

    cancer = load_breast_cancer()
    for name, l2 in (("host-a", 1e-3), ("host-b", 2e-3)):
        preprocess(cancer.data, 2.0 * cancer.target - 1.0, 2, l2, tmp_path / name, dataset="bc", source_sha256=None)
    run = [sys.executable, "-m", "mpiopt", "run", "--method", "gd", "--iters", "5", "--no-progress"]
    cmd = [mpiexec_path(), "-n", "1", *run, "--data", str(tmp_path / "host-a"), "--out", str(tmp_path / "a.json"),
           ":", "-n", "1", *run, "--data", str(tmp_path / "host-b"), "--out", str(tmp_path / "a.json")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=launch.mpi_env(2))
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("mpiopt: error: the ranks read different") == 1, res.stderr
    assert "rank(s) [0]" in res.stderr and "rank(s) [1]" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "a.json").exists()


def test_load_problem_gives_the_cli_shards_to_python(tmp_path):
    from mpiopt.data import preprocess

    cancer = load_breast_cancer()
    for workers in (1, 2):
        preprocess(cancer.data, 2.0 * cancer.target - 1.0, workers, 1e-3, tmp_path / f"bc-{workers}", dataset="bc",
                   source_sha256=None)
    problem, meta = mpiopt.load_problem(str(tmp_path / "bc-1"))
    assert isinstance(problem, mpiopt.problems.LogisticProblem) and problem.n_samples == meta["n_samples"]
    res = mpiopt.minimize(problem, "gd", iters=3000, tol=1e-8, x_star=meta["x_star"], f_star=meta["f_star"])
    assert res.status == "converged" and res.trace["history"]["f_gap"][-1] < 1e-8
    with pytest.raises(InputError, match="2"):
        mpiopt.load_problem(str(tmp_path / "bc-2"))
