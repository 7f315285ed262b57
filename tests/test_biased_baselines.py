"""The biased baselines' defining properties, in one process (a communicator of size 1).

EF-signSGD (``ef-sgd`` with the ``sign`` compressor): e_new = p - (||p||_1 / d) sign(p) exactly, and
the bit-packed message round-trips.
DGC (the ``dgc`` memory with the ``dgc`` compressor): what is sent is exactly what is cleared from u
and v, the sampled threshold hits about the target density, and the warm-up schedule. (That the
mean is the worker-order sum of every rank's pairs, repeats included, is checked exactly over real
ranks in tests/mpi/_biased_step.py.)
PowerSGD (``ef-sgd`` with the ``powersgd`` compressor): p = lr g + e, e_new = p - P^ P^T p with
orthonormal P^, exact (e = 0) at full rank, Q warm-started, heavy-ball momentum after decoding.
All three: wire bytes per step, a resumed run continues bit-identically, and bad options are refused.
"""

import math

import numpy as np
import pytest

import mpiopt
from mpi4py import MPI

from mpiopt.comm import MPICommunicator
from mpiopt.compressors import dgc as dgc_mod
from mpiopt.compressors import sign
from mpiopt.compressors.dgc import DGCSparsifier
from mpiopt.compressors.powersgd import matrix_shape
from mpiopt.compressors.sign import SignCompressor
from mpiopt.errors import InputError
from mpiopt.methods import make_method
from mpiopt.problems import LogisticProblem
from mpiopt.run import make_context


class Quadratic:
    """f(x) = 1/2 x^T H x - c^T x with a gradient that changes with the minibatch (so EF has work)."""

    def __init__(self, d: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        B = rng.standard_normal((d, d)) / np.sqrt(d)
        self.H = B @ B.T + 0.1 * np.eye(d)
        self.c = rng.standard_normal(d)
        self.noise = rng.standard_normal((50, d)) * 0.1
        self.dim, self.n_samples = d, 50
        self.last = None

    def loss(self, x):
        return 0.5 * x @ self.H @ x - self.c @ x

    def grad(self, x, out=None):
        out = np.empty(self.dim) if out is None else out
        out[...] = self.H @ x - self.c
        return out

    def stochastic_grad(self, x, idx, out=None):
        out = self.grad(x, out)
        out += self.noise[idx].mean(axis=0)
        self.last = out.copy()
        return out

    def smoothness(self):
        return float(np.linalg.eigvalsh(self.H)[-1])


def never_fails(k, local_bad):
    raise AssertionError(f"fail({k}, {local_bad}) called on finite values")


def compressor(cls, d, **opts):
    """A compressor on a communicator of size 1."""
    return cls(MPICommunicator(MPI.COMM_SELF), d, seed=0, worker=0, fail=never_fails, **opts)


def build(name, d=37, seed=0, **options):
    problem = Quadratic(d, seed)
    ctx = make_context(problem, MPICommunicator(), seed=seed, lr=options.pop("lr", None), batch=4, L=None, L_max=None)
    method = make_method(name, ctx, **options)
    x = np.zeros(d)
    method.start(x)
    return method, problem, x


# ----------------------------------------------------------------------------------------------- EF-signSGD

@pytest.mark.parametrize("d", [1, 7, 8, 9, 123, 1000])
def test_sign_message_round_trips(d):
    rng = np.random.default_rng(d)
    p = rng.standard_normal(d)
    p[:: 3] = 0.0  # sign(0) is +1: one bit per coordinate
    comp = compressor(SignCompressor, d)
    mean, delta = np.empty(d), np.empty(d)
    comp.exchange(p, 0, None, 0.1, mean, delta)
    msg = comp.send
    assert msg.dtype == np.uint8 and msg.size == sign.message_bytes(d) == 8 + math.ceil(d / 8)
    assert comp.comm.bytes_sent == msg.size and comp.bits == d + 64
    scale = np.abs(p).sum() / d
    assert scale == msg[:8].view(np.float64)[0]
    bits = np.unpackbits(msg[8:], count=d)
    assert np.array_equal(bits.astype(bool), p >= 0)
    signs = np.take(sign.SIGN_TABLE, msg[8:], axis=0).reshape(-1)[:d]
    assert np.array_equal(signs, np.where(p >= 0, 1.0, -1.0))
    assert np.array_equal(delta, scale * signs)
    assert np.array_equal(mean, delta)  # n = 1: the mean of one delta


def test_ef_signsgd_error_feedback_invariant_is_exact():
    m, problem, x = build("ef-signsgd", d=37)
    for k in range(20):
        e_old, x_old = m.state["memory/e"].copy(), x.copy()
        m.step(x, k)
        p = m.lr * problem.last + e_old
        delta = (np.abs(p).sum() / p.size) * np.where(p >= 0, 1.0, -1.0)
        assert np.array_equal(m.state["memory/e"], p - delta)
        assert np.array_equal(x, x_old - delta)  # n = 1: the mean of one delta
    assert m.ctx.comm.bytes_sent == 20 * (8 + 5)
    assert m.info_bits == 20 * (37 + 64)


# ----------------------------------------------------------------------------------------------------- DGC

def test_warmup_density_decays_geometrically_to_the_target():
    dens = [dgc_mod.density_at(k, 0.01, 10, 0.25) for k in range(15)]
    assert dens[0] == 0.25 and dens[10:] == [0.01] * 5
    ratios = np.array(dens[1:11]) / np.array(dens[:10])
    np.testing.assert_allclose(ratios, (0.01 / 0.25) ** 0.1, rtol=1e-12)
    assert dgc_mod.density_at(0, 0.01, 0, 0.25) == 0.01  # no warm-up
    assert dgc_mod.density_at(3, 0.5, 10, 0.25) == 0.5  # target denser than the warm-up start
    assert [dgc_mod.count_for(q, 123) for q in (1e-9, 0.01, 0.25, 1.0)] == [1, 2, 31, 123]
    assert dgc_mod.count_for(0.01, 100) == 1  # 0.01 * 100 rounds to 1, not 2

    m, _, x = build("dgc", d=200, warmup_iters=4, warmup_density=0.2, density=0.02)
    counts = []
    for k in range(6):
        m.step(x, k)
        counts.append(m.comp.sent)
    assert counts == [math.ceil(200 * 0.2 * 0.1 ** (k / 4)) for k in range(4)] + [4, 4] == [40, 23, 13, 8, 4, 4]


def test_exact_top_k_for_small_d():
    rng = np.random.default_rng(1)
    absv = np.abs(rng.standard_normal(123))
    s = dgc_mod.sample_size(123, 0.05)
    assert s == 123
    comp = compressor(DGCSparsifier, 123, density=0.05, warmup_iters=0)
    assert comp.count(0) == 7
    chosen = comp.select(absv, 0)
    assert np.array_equal(chosen, np.sort(np.argsort(absv)[-7:]))


def test_sampled_threshold_selects_about_the_target_density():
    rng = np.random.default_rng(2)
    d, density = 200_000, 0.001
    k = dgc_mod.count_for(density, d)
    s = dgc_mod.sample_size(d, density)
    assert s < d
    comp = compressor(DGCSparsifier, d, density=density, warmup_iters=0)
    assert comp.count(0) == k
    sizes = []
    for trial in range(10):
        absv = np.abs(rng.standard_normal(d)) * (1 + trial)
        chosen = comp.select(absv, trial)  # the sample is keyed on the step: another one each trial
        sizes.append(chosen.size)
        # whatever is chosen is the top |chosen| of |v|
        assert np.array_equal(chosen, np.sort(np.argsort(absv)[-chosen.size:]))
    assert 0.5 * k <= np.mean(sizes) <= k and max(sizes) <= k


def test_dgc_sends_exactly_what_it_clears_from_u_and_v():
    m, problem, x = build("dgc", d=50, warmup_iters=0, density=0.1)
    for k in range(30):
        u_old, v_old, x_old = m.state["memory/u"].copy(), m.state["memory/v"].copy(), x.copy()
        m.step(x, k)
        u_new = 0.9 * u_old + problem.last
        v_new = v_old + u_new
        idx = m.comp.sent_indices.copy()
        assert idx.size == 5 and np.array_equal(idx, np.sort(np.argsort(np.abs(v_new))[-5:]))
        rest = np.setdiff1d(np.arange(50), idx)
        assert (m.state["memory/u"][idx] == 0).all() and (m.state["memory/v"][idx] == 0).all()
        assert np.array_equal(m.state["memory/u"][rest], u_new[rest])
        assert np.array_equal(m.state["memory/v"][rest], v_new[rest])
        sent = np.zeros(50)
        sent[idx] = v_new[idx]  # the values sent are exactly v there: n = 1, so the mean is what was sent
        assert np.array_equal(x, x_old - sent * m.lr)
    assert m.ctx.comm.bytes_sent == 30 * (4 + 5 * 12)


def test_dgc_clips_the_local_gradient_and_sends_float32_values():
    m, problem, x = build("dgc", d=50, warmup_iters=0, clip_norm=1e-3, float_dtype="float32")
    m.step(x, 0)
    g = problem.last
    assert np.linalg.norm(g) > 1e-3
    v = g * (1e-3 / math.sqrt(float(np.dot(g, g))))  # u = v = the clipped gradient at step 0
    assert np.linalg.norm(v) == pytest.approx(1e-3, rel=1e-12)
    idx = m.comp.sent_indices.copy()
    assert idx.size == 1 and m.comp.value_dtype == np.float32
    rest = np.setdiff1d(np.arange(50), idx)
    assert np.array_equal(m.state["memory/v"][rest], v[rest]) and (m.state["memory/v"][idx] == 0).all()
    sent = np.zeros(50)
    sent[idx] = v[idx].astype(np.float32)  # the value went as float32
    assert np.array_equal(x, -(sent * m.lr))
    assert m.ctx.comm.bytes_sent == 4 + 1 * 8


# ------------------------------------------------------------------------------------------------ PowerSGD

@pytest.mark.parametrize("d", [1, 2, 10, 123, 144, 145, 10_000])
def test_matrix_shape_is_near_square_and_holds_d(d):
    rows, cols = matrix_shape(d)
    assert rows * cols >= d and rows * (cols - 1) < d and 0 <= rows - cols <= 1


def powersgd_reference(m, problem, e_old, q_old):
    """(p, P^, Q_i, this rank's decoded P^ Q_i^T) of one step: p = lr g + e as a zero-padded matrix."""
    rows, cols = m.comp.shape
    p = m.lr * problem.last + e_old
    M = np.zeros(rows * cols)
    M[: problem.dim] = p
    M = M.reshape(rows, cols)
    Phat = np.linalg.qr(M @ q_old)[0]
    Qi = M.T @ Phat
    return p, Phat, Qi, (Phat @ Qi.T).ravel()[: problem.dim]


def test_powersgd_local_error_feedback_and_warm_start():
    m, problem, x = build("powersgd", d=37, rank=2)
    assert m.comp.shape == (7, 6) and m.comp.r == 2
    for k in range(15):
        e_old, q_old, x_old = m.state["memory/e"].copy(), m.state["comp/q"].copy(), x.copy()
        m.step(x, k)
        p, Phat, Qi, local = powersgd_reference(m, problem, e_old, q_old)
        np.testing.assert_allclose(m.comp._P.T @ m.comp._P, np.eye(2), atol=1e-13)
        np.testing.assert_allclose(m.state["memory/e"], p - local, rtol=0, atol=1e-13)
        np.testing.assert_allclose(m.state["comp/q"], Qi, rtol=0, atol=1e-13)  # n = 1: the mean of one Q
        np.testing.assert_allclose(x_old - x, local, rtol=0, atol=1e-13)  # lr is inside p
        assert np.abs(m.state["memory/e"]).max() > 1e-6  # rank 2 < 6: not exact
    assert m.ctx.comm.bytes_sent == 15 * 8 * 2 * (7 + 6)


@pytest.mark.parametrize("rank", [6, 50])
def test_powersgd_at_full_rank_is_exact(rank):
    m, problem, x = build("powersgd", d=37, rank=rank)
    assert m.comp.r == 6
    for k in range(10):
        x_old = x.copy()
        m.step(x, k)
        np.testing.assert_allclose(m.state["memory/e"], 0.0, atol=1e-13)
        np.testing.assert_allclose(x_old - x, m.lr * problem.last, rtol=1e-12, atol=1e-14)


def test_powersgd_momentum_is_heavy_ball_after_decoding():
    m, problem, x = build("powersgd", d=37, rank=1, momentum=0.5)
    mom = np.zeros(37)
    for k in range(5):
        e_old, q_old, x_old = m.state["memory/e"].copy(), m.state["comp/q"].copy(), x.copy()
        m.step(x, k)
        _, _, _, D = powersgd_reference(m, problem, e_old, q_old)  # n = 1: the mean of one decode
        mom = 0.5 * mom + D
        np.testing.assert_allclose(m.state["m"], mom, rtol=0, atol=1e-13)
        np.testing.assert_allclose(x_old - x, mom, rtol=0, atol=1e-13)


# ------------------------------------------------------------------------------------------------ all three

@pytest.fixture(scope="module")
def logistic():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((400, 30))
    A /= np.linalg.norm(A, axis=1, keepdims=True)
    b = np.where(A @ rng.standard_normal(30) + 0.3 * rng.standard_normal(400) > 0, 1.0, -1.0)
    return LogisticProblem(A, b, l2=1e-3)


@pytest.mark.parametrize("method", ["ef-signsgd", "dgc", "powersgd"])
def test_decreases_f_and_resumes_bit_identically(logistic, method, tmp_path):
    full = mpiopt.minimize(logistic, method, iters=60, batch=8, seed=5)
    assert full.fun < 0.9 * np.log(2)
    ckpt = tmp_path / "ckpt"
    mpiopt.minimize(logistic, method, iters=40, batch=8, seed=5, checkpoint_dir=ckpt, checkpoint_every=20)
    resumed = mpiopt.minimize(logistic, method, iters=60, batch=8, seed=5, checkpoint_dir=ckpt,
                              checkpoint_every=20, resume=True)
    assert resumed.trace["resumed_from"] == 40
    assert np.array_equal(resumed.x, full.x)
    assert resumed.trace["history"]["wire_bytes"][-1] == full.trace["history"]["wire_bytes"][-1]


@pytest.mark.parametrize("method, options, match", [
    ("dgc", {"density": 0.0}, "density="),
    ("dgc", {"momentum": 1.0}, "momentum="),
    ("dgc", {"warmup_iters": -1}, "warmup_iters="),
    ("dgc", {"clip_norm": -1.0}, "clip_norm="),
    ("powersgd", {"rank": 0}, "rank="),
    ("powersgd", {"momentum": 1.0}, "momentum="),
    ("ef-signsgd", {"momentum": 1.0}, "momentum="),
    ("ef-signsgd", {"rank": 2}, "method 'ef-signsgd' with compressor sign does not use option"),
    ("ef-signsgd", {"colour": "red"}, "method 'ef-signsgd' does not take option"),
    ("diana", {"compressor": "sign"}, r"method 'diana' needs an unbiased compressor.*use method='ef-sgd', compressor='sign'"),
    ("vr-diana", {"compressor": "powersgd"}, r"method 'vr-diana' needs an unbiased.*method='ef-sgd', compressor='powersgd'"),
])
def test_bad_options_are_refused(logistic, method, options, match):
    with pytest.raises(InputError, match=match):
        mpiopt.minimize(logistic, method, iters=1, **options)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_gradient_stops_each_method(logistic):
    for method in ("ef-signsgd", "dgc", "powersgd"):
        with pytest.raises(mpiopt.errors.RunError, match=r"non-finite gradient at iteration 0 on rank\(s\) \[0\]"):
            mpiopt.minimize(logistic, method, iters=3, x0=np.full(logistic.dim, np.nan))
