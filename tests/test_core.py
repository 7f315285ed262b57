"""The compressor core (one process): registry, declared options, composition, alpha, explicit kernels.

Multi-rank properties are in tests/mpi/ (same iterates, 130 ranks, worker order, CLI errors).
"""

import math

import numpy as np
import pytest
from mpi4py import MPI
from sklearn.datasets import load_breast_cancer

import mpiopt
from mpiopt.comm import MPICommunicator
from mpiopt.compressors import REGISTRY, Compressor, compressor_class, register
from mpiopt.compressors.alpha import adaptive_alpha
from mpiopt.compressors.integer import IntCompressor
from mpiopt.errors import InputError
from mpiopt.methods import METHODS
from mpiopt.problems import LogisticProblem

BIASED = sorted(name for name, cls in REGISTRY.items() if not cls.unbiased)
UNBIASED = sorted(name for name, cls in REGISTRY.items() if cls.unbiased)


@pytest.fixture(scope="module")
def problem():
    data = load_breast_cancer()
    A = data.data / np.linalg.norm(data.data, axis=1, keepdims=True)
    return LogisticProblem(A, 2.0 * data.target - 1.0, l2=1e-2)


def fail(k, local_bad):
    raise AssertionError(f"non-finite at {k}")


def int_compressor(d, **opts):
    return IntCompressor(MPICommunicator(MPI.COMM_SELF), d, seed=0, worker=0, fail=fail, **opts)


# ---- alpha: one pure function, the current step size every step ------------------------------

def test_scalar_alpha_is_alg1_formula():
    d, n, lr, r, eps = 100, 4, 0.3, np.array([2.5]), 1e-3
    assert adaptive_alpha(lr, r, np.array([float(d)]), n, eps) == lr * math.sqrt(d) / math.sqrt(2 * n * 2.5 + (lr * eps) ** 2)


def test_block_alpha_is_alg2_formula():
    sizes, r, lr, n, eps = np.array([3.0, 5.0]), np.array([1.0, 4.0]), 0.2, 2, 0.5
    got = adaptive_alpha(lr, r, sizes, n, eps)
    want = lr * np.sqrt(sizes) / np.sqrt(2 * n * r + lr ** 2 * (sizes / 8.0) * eps ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-15)


@pytest.mark.parametrize("block_size", [None, 2])
def test_alpha_follows_the_step_size_given_at_each_exchange(block_size):
    """x does not move, so r = 0 and alpha = lr sqrt(d_l) / (lr eps sqrt(d_l / d)) = sqrt(d) / eps for
    any lr; a stale step size in the eps term (the old scalar bug) gives lr_new / lr_old times that."""
    d, eps = 6, 1e-2
    comp = int_compressor(d, eps=eps, block_size=block_size)
    x, v, mean = np.zeros(d), np.ones(d), np.empty(d)
    for k, lr in enumerate([0.5, 0.5, 0.05, 0.005]):
        comp.exchange(v, k, x, lr, mean)
        if k >= 1:
            np.testing.assert_allclose(comp.alpha_blocks, math.sqrt(d) / eps, rtol=1e-12)


def test_alpha_blocks_exist_for_one_block_and_constant_alpha():
    comp = int_compressor(4, alpha="constant", alpha0=7.0)
    comp.exchange(np.ones(4), 0, np.zeros(4), 0.1, np.empty(4))
    assert comp.alpha_blocks.tolist() == [7.0]


# ---- the registry and declared options --------------------------------------------------------

def test_every_registered_compressor_declares_options_and_collective():
    assert {"none", "int", "hint", "nat", "qsgd", "sign", "powersgd"} <= set(REGISTRY)
    for cls in REGISTRY.values():
        assert cls.collective in ("allreduce_int", "allreduce_float", "allgather", "alltoall")
        assert all(o.help for o in cls.options), cls.name


def test_register_refuses_a_second_class_under_a_taken_name():
    class Impostor(Compressor):
        name = "int"

    with pytest.raises(ValueError, match="registered already"):
        register(Impostor)
    assert compressor_class("int") is IntCompressor


def test_unknown_compressor_lists_the_registered_ones(problem):
    with pytest.raises(InputError, match="unknown compressor 'zip'; choose one of: none, int"):
        mpiopt.minimize(problem, "sgd", iters=1, compressor="zip")


def test_option_errors_name_the_method_the_user_typed(problem):
    with pytest.raises(InputError, match="method 'intdiana' with compressor int does not use option.s. levels"):
        mpiopt.minimize(problem, "intdiana", iters=1, levels=4)
    with pytest.raises(InputError, match="method 'vr-intdiana' does not take option.s. colour"):
        mpiopt.minimize(problem, "vr-intdiana", iters=1, colour=4)


@pytest.mark.parametrize("method", ["diana", "vr-diana"])
@pytest.mark.parametrize("compressor", BIASED)
def test_diana_refuses_a_biased_compressor_and_names_ef_sgd(problem, method, compressor):
    with pytest.raises(InputError, match=f"use method='ef-sgd', compressor='{compressor}'") as info:
        mpiopt.minimize(problem, method, iters=1, compressor=compressor)
    assert info.value.exit_code == 2


def test_gd_refuses_batch(problem):
    with pytest.raises(InputError, match="method 'gd' uses each rank's full local gradient; drop batch="):
        mpiopt.minimize(problem, "gd", iters=1, batch=8)


def test_aliases_are_compositions():
    assert METHODS["ef-signsgd"] == (METHODS["ef-sgd"][0], {"compressor": "sign"})
    assert METHODS["powersgd"] == (METHODS["ef-sgd"][0], {"compressor": "powersgd"})
    assert METHODS["vr-intdiana"] == (METHODS["vr-diana"][0], {"compressor": "int"})
    assert METHODS["dgc"][0].memory == "dgc"


# ---- composition: any compressor with sgd / ef-sgd, unbiased ones with diana --------------------

@pytest.mark.parametrize("compressor", sorted(REGISTRY))
def test_sgd_and_ef_sgd_take_every_compressor(problem, compressor):
    for method in ("sgd", "ef-sgd"):
        res = mpiopt.minimize(problem, method, iters=60, batch=32, seed=1, compressor=compressor)
        loss = res.trace["history"]["loss"]
        assert res.trace["config"]["compressor"] == compressor
        assert loss[-1] < loss[0], (method, compressor, loss[0], loss[-1])


@pytest.mark.parametrize("compressor", UNBIASED)
def test_diana_takes_every_unbiased_compressor(problem, compressor):
    res = mpiopt.minimize(problem, "diana", iters=60, batch=32, compressor=compressor)
    assert res.trace["history"]["loss"][-1] < res.trace["history"]["loss"][0]


def test_ef_sgd_residual_is_in_the_state_record(problem):
    from mpiopt.methods import make_method
    from mpiopt.run import make_context

    ctx = make_context(problem, MPICommunicator(MPI.COMM_SELF), 0, None, 8, None, None)
    method = make_method("ef-sgd", ctx, compressor="sign")
    x = np.zeros(problem.dim)
    method.start(x)
    method.step(x, 0)
    assert "memory/e" in method.state and np.abs(method.state["memory/e"]).sum() > 0


# ---- kernels: explicit, recorded, compiled before the first timed step ---------------------------

@pytest.mark.parametrize("kernel", ["numpy", "numba"])
def test_kernel_option_is_recorded_and_gives_the_same_iterates(problem, kernel):
    pytest.importorskip("numba") if kernel == "numba" else None
    res = mpiopt.minimize(problem, "intsgd", iters=30, batch=16, kernel=kernel)
    ref = mpiopt.minimize(problem, "intsgd", iters=30, batch=16, kernel="numpy")
    assert res.trace["config"]["kernel"] == kernel and res.trace["wire"]["kernel"] == kernel
    assert res.x.tolist() == ref.x.tolist()


@pytest.mark.parametrize("method,opts", [
    ("intdiana", {}),
    ("vr-intdiana", {}),
    ("vr-intdiana", {"alpha": "paper", "block_size": 7}),
    ("vr-intdiana", {"first_step": "exponent"}),
    ("vr-intdiana", {"alpha": "constant", "alpha0": 3e4}),  # auto redoes steps in int16 and int32
    ("vr-intdiana", {"alpha": "constant", "alpha0": 3e4, "wire_dtype": "int8"}),  # clipped
    ("vr-diana", {"compressor": "nat"}),  # these three: omega > 0, the decoded mean and local fused
    ("diana", {"compressor": "qsgd"}),
    ("vr-diana", {"compressor": "hint"}),
])
def test_diana_steps_fused_by_numba_give_the_numpy_sequences_iterates(monkeypatch, problem, method, opts):
    """The numba kernel does DIANA's passes around the exchange in compiled loops
    (mpiopt.kernels.shift_numba); the numpy kernel runs the plain numpy sequence. Same bits."""
    numba_kernel = pytest.importorskip("mpiopt.kernels.numba")
    from mpiopt.kernels import shift_numba

    fused = []
    int_update, decoded_update = numba_kernel.Quantizer.shift_update, shift_numba.shift_update_decoded
    move_update = numba_kernel.Quantizer.shift_update_move  # the paper's alpha: the update also sums x's move
    monkeypatch.setattr(numba_kernel.Quantizer, "shift_update", lambda self, *a: fused.append(1) or int_update(self, *a))
    monkeypatch.setattr(numba_kernel.Quantizer, "shift_update_move",
                        lambda self, *a: fused.append(1) or move_update(self, *a))
    monkeypatch.setattr(shift_numba, "shift_update_decoded", lambda *a: fused.append(1) or decoded_update(*a))
    res = mpiopt.minimize(problem, method, iters=60, batch=16, kernel="numba", **opts)
    calls = len(fused)
    assert calls >= 59  # every step (the int compressor's float first step aside) took a fused update
    ref = mpiopt.minimize(problem, method, iters=60, batch=16, kernel="numpy", **opts)
    assert len(fused) == calls  # and the numpy kernel none
    assert res.x.tolist() == ref.x.tolist()
    assert res.trace["history"]["info_bits"] == ref.trace["history"]["info_bits"]
    assert {k: v for k, v in res.trace["wire"].items() if k != "kernel"} == \
        {k: v for k, v in ref.trace["wire"].items() if k != "kernel"}


def test_compile_time_is_reported_apart_from_step_time(problem):
    res = mpiopt.minimize(problem, "vr-intdiana", iters=5, batch=8)
    assert res.trace["compile_seconds"] >= 0.0 and "compile_seconds" not in res.trace["history"]


def test_bad_kernel_name_is_an_input_error(problem):
    with pytest.raises(InputError, match="kernel= must be one of numba, numpy, got 'cuda'"):
        mpiopt.minimize(problem, "intsgd", iters=1, kernel="cuda")


# ---- the torch optimizer reads alpha from the compressor's record ---------------------------------

@pytest.mark.parametrize("block", [None, "layer"])
def test_torch_intsgd_alpha_is_zero_before_and_the_formula_after_integer_steps(block):
    torch = pytest.importorskip("torch")
    import mpiopt.torch as mt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 1))
    opt = mt.IntSGD(model.parameters(), lr=0.1, block=block, beta=0.0)
    n_blocks = 1 if block is None else 4
    assert opt.alpha.tolist() == [0.0] * n_blocks  # not uninitialised memory
    for _ in range(3):
        opt.zero_grad()
        model(torch.ones(2, 5)).sum().backward()
        opt.step()
    comp = opt.engine.comp
    expected = adaptive_alpha(0.1, comp.state["r"], comp.sizes, 1, 1e-8)
    np.testing.assert_array_equal(opt.alpha, np.atleast_1d(expected))
    assert np.all(opt.alpha > 0)


def test_clipping_with_auto_blames_an_alpha_too_large_not_the_wire_dtype(problem):
    res = mpiopt.minimize(problem, "intsgd", iters=20, batch=16, alpha="constant", alpha0=1e300)
    warning = " ".join(res.trace["warnings"])
    assert "alpha is too large: lower --alpha0" in warning and "use --wire-dtype auto" not in warning
    fixed = mpiopt.minimize(problem, "intsgd", iters=20, batch=16, alpha="constant", alpha0=1e6, wire_dtype="int8")
    assert "use --wire-dtype auto or a wider dtype" in " ".join(fixed.trace["warnings"])


class LeastSquaresWithoutSmoothness:
    """A custom problem with no smoothness() and no sample_smoothness(): L and L_max must suffice."""

    def __init__(self, A, b):
        self.A, self.b, self.dim, self.n_samples = A, b, A.shape[1], A.shape[0]

    def loss(self, x):
        r = self.A @ x - self.b
        return 0.5 * float(r @ r) / self.n_samples

    def grad(self, x, out=None):
        out[...] = self.A.T @ (self.A @ x - self.b) / self.n_samples
        return out

    def stochastic_grad(self, x, idx, out=None):
        A = self.A[idx]
        out[...] = A.T @ (A @ x - self.b[idx]) / len(idx)
        return out


@pytest.mark.parametrize("method", ["vr-intdiana", "l-svrg", "intsgd", "gd"])
def test_given_L_and_L_max_nothing_else_is_needed(method):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((200, 5))
    problem = LeastSquaresWithoutSmoothness(A, A @ np.ones(5))
    batch = {} if method == "gd" else {"batch": 10}
    res = mpiopt.minimize(problem, method, iters=300, L=5.0, L_max=6.0, **batch)
    assert res.fun < 1e-3 * problem.loss(np.zeros(5))
