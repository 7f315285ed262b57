"""The torch optimizers of ``mpiopt.torch``: over real ``mpiexec`` (2 ranks) and in one process.

Over MPI (``_torch_checks.py``, launched once): IntSGD's parameters are bitwise those of mpiopt's
numpy IntSGD fed the same gradients (scalar and per-layer alpha, int8/int16/auto wires) and, with
momentum and weight decay, those of the documented rule; per-layer alpha matches Alg. 2 and is the
same on every rank; scalar alpha matches Alg. 1 with the current step size of an LR schedule; every
optimizer resumes bit-identically from its state_dict and keeps the parameters identical on all
ranks. In one process (``comm=None`` = COMM_WORLD of size 1): the wire
bytes of an int8 step, the argument checks, and a refused state of another optimizer.
"""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mpiopt.torch as mt  # noqa: E402
from mpiopt.torch.common import layer_starts  # noqa: E402
from mpiopt.compressors.integer import HEADER  # noqa: E402
from mpilaunch import run_script  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("torch-checks") / "report.json"
    res = run_script(2, HERE / "_torch_checks.py", out, timeout=300)
    assert res.returncode == 0, f"_torch_checks.py failed:\n{res.stdout}\n{res.stderr}"
    return json.loads(out.read_text())


@pytest.mark.parametrize("case", ["intsgd-scalar-int8", "intsgd-scalar-auto", "intsgd-scalar-float-first",
                                  "intsgd-layer-int16", "intsgd-momentum-wd"])
def test_parity_with_numpy_intsgd(report, case):
    assert report["n_ranks"] == 2
    assert report[f"parity/{case}"] is True


def test_layer_alpha_is_per_parameter_tensor(report):
    assert report["alpha/per_layer_shared"] is True
    assert report["alpha/distinct_layers"] is True
    assert report["alpha/max_rel_err"] < 1e-12


def test_scalar_alpha_follows_the_current_step_size(report):
    assert report["alpha/scalar_zero_before_first_step"] is True and report["alpha/scalar_shared"] is True
    assert report["alpha/scalar_schedule_max_rel_err"] < 1e-12
    assert -report["alpha/scalar_schedule_stale_gap"] > 1e-3  # a stale step size would have been seen


def test_lr_schedule_to_zero_sends_finite_exact_means(report):
    assert report["lr_zero/steps"] is True
    assert report["lr_zero/normalized_error"] < 1.0


@pytest.mark.parametrize("name", sorted(mt.OPTIMIZERS))
def test_resume_is_bit_identical_and_ranks_agree(report, name):
    assert report[f"resume/{name}"] is True
    assert report[f"same/{name}"] is True
    assert report[f"moved/{name}"] is True


def tiny():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    return model, x, y


def test_one_process_int8_wire_bytes_and_block_alpha():
    model, x, y = tiny()
    opt = mt.IntSGD(model.parameters(), lr=0.1, momentum=0.9, wire_dtype="int8", alpha0=10.0)
    d = sum(p.numel() for p in model.parameters())
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    assert opt.comm.size == 1
    assert opt.wire_bytes == 3 * (d + HEADER)  # int8: one byte per coordinate + the header slots
    assert opt.alpha.shape == (4,)  # two weights, two biases
    assert all(p.grad.untyped_storage().data_ptr() == opt.bucket.grads.data_ptr() for p in model.parameters())


def test_an_empty_parameter_tensor_has_no_alpha_block():
    """A zero-size parameter (e.g. a layer built with 0 features) has no coordinates: per-layer
    alpha gives it no block instead of refusing the repeated start."""
    model, x, y = tiny()
    model.register_parameter("empty", torch.nn.Parameter(torch.zeros(0)))
    opt = mt.IntSGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (torch.nn.functional.cross_entropy(model(x), y) + model.empty.sum()).backward()
        opt.step()
    assert opt.alpha.shape == (4,) and (opt.alpha > 0).all()
    assert layer_starts([(0, 0), (0, 5), (5, 0), (5, 3), (8, 0)]) == [0, 5]
    assert layer_starts([(0, 0)]) is None


def test_argument_checks():
    model, _, _ = tiny()
    with pytest.raises(ValueError, match="one parameter group"):
        mt.IntSGD([{"params": model[0].parameters()}, {"params": model[2].parameters()}], lr=0.1)
    with pytest.raises(ValueError, match="block must be"):
        mt.IntSGD(model.parameters(), lr=0.1, block="chunk")
    with pytest.raises(ValueError, match="momentum"):
        mt.SGD(model.parameters(), lr=0.1, momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        mt.SGD(model.parameters(), lr=0.0)


def test_state_of_another_optimizer_is_refused():
    model, x, y = tiny()
    state = mt.SGD(model.parameters(), lr=0.1).state_dict()
    model2, _, _ = tiny()
    with pytest.raises(ValueError, match="method saved 'sgd', here 'intsgd'"):
        mt.IntSGD(model2.parameters(), lr=0.1).load_state_dict(state)
    assert np.isfinite(state["mpiopt"]["arrays"]["momentum"].numpy()).all()
