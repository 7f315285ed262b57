"""A rank that fails inside ``mpiopt.minimize`` ends every rank promptly (issue 25), without
``python -m mpi4py``: real ``mpiexec -n 2`` jobs whose hard timeout is what a hang would hit."""

from pathlib import Path

from mpilaunch import run_script

HERE = Path(__file__).resolve().parent
TIMEOUT = 60
"""A hang would take this long (the job is killed and the test fails); a prompt end takes seconds."""


def test_a_rank_whose_grad_raises_ends_every_rank_with_its_error():
    res = run_script(2, HERE / "_failing_rank.py", "grad", timeout=TIMEOUT)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "finished" not in res.stdout, res.stdout  # neither rank went on
    assert "[rank 1] ValueError: rank 1's data is broken" in res.stderr, res.stderr
    assert "mpiopt: error: [rank 1] ValueError: rank 1's data is broken" in res.stderr, res.stderr
    assert "[rank 1]   File " in res.stderr and "stochastic_grad" in res.stderr  # the traceback, prefixed


def test_a_callback_raising_on_one_rank_ends_every_rank():
    res = run_script(2, HERE / "_failing_rank.py", "callback", timeout=TIMEOUT)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "finished" not in res.stdout, res.stdout
    assert "mpiopt: error: [rank 0] RuntimeError: callback failed on rank 0" in res.stderr, res.stderr


def test_a_member_missing_on_one_rank_is_one_error_on_every_rank():
    res = run_script(2, HERE / "_failing_rank.py", "missing", timeout=TIMEOUT)
    assert res.returncode == 0, res.stdout + res.stderr
    expected = ("caught InputError (collective=True): [rank 1] the problem (NoStochastic) lacks stochastic_grad(), "
                "which method 'sgd' needs; a problem has dim, n_samples, loss(x), grad(x, out=None), "
                "stochastic_grad(x, idx, out=None) and smoothness() (see help(mpiopt.problems.Problem))")
    # each rank prints one line; mpiexec may forward the two ranks' writes run together, so look for both
    assert all(f"rank {r} {expected}" in res.stdout for r in (0, 1)), res.stdout
    assert res.stdout.count(expected) == 2, res.stdout
