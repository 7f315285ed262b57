"""Compressors and the integer methods in one process (a communicator of size 1).

Unbiasedness of NatSGD's and QSGD's compressors is checked by Monte Carlo over many steps (fixed
seeds; tolerance 5 standard deviations of the mean, from each coordinate's exact variance). The int
compressor's alpha is checked against the formulas of Alg. 1 and 2, its ``auto`` wire dtype against
the bytes it sends. The multi-rank properties are in tests/mpi/test_integer_methods.py.
"""

import math

import numpy as np
import pytest
from mpi4py import MPI
from sklearn.datasets import load_breast_cancer

import mpiopt
from mpiopt.comm import INT_DTYPES, MPICommunicator
from mpiopt.compressors.base import all_finite
from mpiopt.compressors.hint import HintCompressor
from mpiopt.compressors.integer import SHRINK_AFTER, IntCompressor
from mpiopt.compressors.nat import NatCompressor
from mpiopt.compressors.none import NoCompression
from mpiopt.compressors.qsgd import QSGDCompressor
from mpiopt.errors import InputError
from mpiopt.kernels import KERNEL_ENV
from mpiopt.methods import METHODS
from mpiopt.problems import LogisticProblem

MINE = ("l-svrg", "diana", "vr-diana", "intsgd", "intdiana", "vr-intdiana", "hintsgd", "natsgd", "qsgd")


class Failed(Exception):
    pass


def fail(k, local_bad):
    raise Failed(k, local_bad)


LR = 0.5
"""The step size passed to every exchange unless a test says otherwise."""


def make(cls, d, seed=0, **opts):
    return cls(MPICommunicator(MPI.COMM_SELF), d, seed=seed, worker=0, fail=fail, **opts)


def run_steps(comp, v, n_steps, x=None):
    """C(v) at steps 0..n-1 (the local decode; with one rank it equals the mean)."""
    out, mean = np.empty((n_steps, v.size)), np.empty(v.size)
    x = np.zeros(v.size) if x is None else x
    for k in range(n_steps):
        comp.exchange(v, k, x, LR, out_mean=mean, out_local=out[k])
        np.testing.assert_array_equal(mean, out[k])
    return out


@pytest.fixture(scope="module")
def problem():
    data = load_breast_cancer()
    A = data.data / np.linalg.norm(data.data, axis=1, keepdims=True)
    return LogisticProblem(A, 2.0 * data.target - 1.0, l2=1e-2)


# ------------------------------------------------------------------------------------------------
# Natural compression and QSGD: unbiased


def test_nat_rounds_to_a_bracketing_power_of_two_without_bias():
    n_steps = 20_000
    tiny = 2.0 ** -130  # more than 126 binades below the largest: rounded between 0 and 2^(E-126)
    v = np.array([3.0, -5.5, 0.7, 1e-3, -(2.0 ** -60), 0.0, 6.0, -7.99, 4.0, tiny])
    comp = make(NatCompressor, v.size)
    draws = run_steps(comp, v, n_steps)
    a = np.abs(v)
    top = math.frexp(7.99)[1]  # 7.99 = 0.99875 * 2^3 rounds to 4 or 8 = 2^top
    small = 2.0 ** (top - 126)
    lo = np.where(a >= small, 2.0 ** np.floor(np.log2(np.where(a > 0, a, 1))), 0.0)
    hi = np.where(a >= small, 2 * lo, small)
    lo[a == 0] = hi[a == 0] = 0.0
    mags = np.abs(draws)
    assert ((mags == lo) | (mags == hi)).all()
    assert (np.sign(draws) * np.sign(v) >= 0).all()
    var = (a - lo) * (hi - a)  # of a two-point unbiased rounding
    assert (np.abs(draws.mean(axis=0) - v) <= 5 * np.sqrt(var / n_steps) + 1e-300).all()
    assert comp.omega(v.size, {}) == 1 / 8
    err = ((draws - v) ** 2).sum(axis=1).mean()
    assert err <= (1 / 8) * (v @ v) * 1.05  # E||C(v) - v||^2 <= omega ||v||^2
    assert comp.comm.bytes_sent == n_steps * (v.size + 4) and comp.bits == 8 * v.size + 16


@pytest.mark.parametrize("v", [
    np.array([3.0, -5.5, 0.7, 1e-3, -(2.0 ** -60), 0.0, -0.0, 6.0, -7.99, 4.0, 2.0 ** -130, -(2.0 ** -140)]),
    np.array([0.0, -0.0, 0.0]),
    np.array([1.0, np.nan, -2.0, np.inf, -np.inf, 5e-324]),
    np.random.default_rng(3).standard_normal(5000) * np.exp(np.random.default_rng(4).uniform(-200, 200, 5000)),
])
def test_nat_numba_codec_sends_the_numpy_codes_bytes_and_decodes_alike(v):
    """The compiled nat codec (mpiopt.kernels.nat_numba) writes the numpy code's message byte for
    byte (zeros, -0, values beyond 126 binades below the top, non-finite values) and decodes it to the
    same mean and local values."""
    pytest.importorskip("numba")
    comps = {kernel: make(NatCompressor, v.size, kernel=kernel) for kernel in ("numba", "numpy")}
    assert comps["numba"]._codec is not None and comps["numpy"]._codec is None
    for k in range(3):
        sent, decoded = {}, {}
        for kernel, comp in comps.items():
            finite = comp.encode(v, k)
            sent[kernel] = (finite, comp.send.copy())
            mean, local = np.empty(v.size), np.empty(v.size)
            ok = comp.decode_mean(comp.send[None, :].copy(), mean, local)
            decoded[kernel] = (ok, mean.tobytes(), local.tobytes()) if ok else ok  # not finite: nothing decoded
        assert sent["numba"][0] == sent["numpy"][0] == bool(np.isfinite(v).all())
        np.testing.assert_array_equal(sent["numba"][1], sent["numpy"][1])
        assert decoded["numba"] == decoded["numpy"]


@pytest.mark.parametrize("levels,code_bytes", [(4, 1), (127, 1), (1000, 2)])
def test_qsgd_is_unbiased_on_s_levels(levels, code_bytes):
    n_steps = 20_000
    v = np.array([0.3, -1.2, 0.0, 2.5, -0.01, 0.7, 1e-9])
    comp = make(QSGDCompressor, v.size, levels=levels)
    draws = run_steps(comp, v, n_steps)
    norm = np.linalg.norm(v)
    t = levels * np.abs(v) / norm
    lv = np.abs(draws) * levels / norm
    assert np.allclose(lv, np.round(lv), atol=1e-6) and (np.abs(np.round(lv) - t) < 1 + 1e-9).all()
    f = t - np.floor(t)
    sd = norm / levels * np.sqrt(f * (1 - f) / n_steps)
    assert (np.abs(draws.mean(axis=0) - v) <= 5 * sd + 1e-15).all()
    assert comp.comm.bytes_sent == n_steps * (v.size * code_bytes + 8)
    assert QSGDCompressor.omega(v.size, {"levels": levels}) == min(v.size / levels**2, math.sqrt(v.size) / levels)


def test_hint_is_unbiased_and_never_clips():
    n_steps = 20_000
    v = np.array([0.3, -1.2, 0.0, 2.5, -0.01])
    comp = make(HintCompressor, v.size, bits=8)
    draws = run_steps(comp, v, n_steps)
    alpha = 127 / 2.0 ** math.ceil(math.log2(2.5))  # floor((2^7 - 1) / 1) / 2^e
    assert np.allclose(draws * alpha, np.round(draws * alpha))
    f = alpha * np.abs(v) % 1.0
    assert (np.abs(draws.mean(axis=0) - v) <= 5 * np.sqrt(f * (1 - f) / n_steps) / alpha + 1e-15).all()
    assert comp.clipped == 0 and comp.comm.bytes_sent == n_steps * (8 + v.size)


# ------------------------------------------------------------------------------------------------
# The int compressor: alpha, first step, auto dtype


def test_adaptive_alpha_follows_alg1_and_first_step_sends_floats():
    d, lr, beta, eps = 6, 0.7, 0.9, 1e-3
    comp = make(IntCompressor, d, beta=beta, eps=eps, rounding="deterministic")
    v = np.linspace(-1, 2, d)
    mean, local = np.empty(d), np.empty(d)
    x0, x1, x2 = np.zeros(d), np.full(d, 0.1), np.full(d, 0.25)
    comp.exchange(v, 0, x0, lr, mean, local)
    np.testing.assert_array_equal(mean, v)  # no x^{k-1}: float64
    assert comp.comm.bytes_sent == 8 * d and comp.bits == 64 * d
    r = d * 0.1**2  # r starts at the first ||x^1 - x^0||^2
    for k, x in ((1, x1), (2, x2)):
        if k == 2:
            r = beta * r + (1 - beta) * d * 0.15**2
        alpha = lr * math.sqrt(d) / math.sqrt(2 * 1 * r + lr**2 * eps**2)
        comp.exchange(v, k, x, lr, mean, local)
        np.testing.assert_allclose(local, np.rint(alpha * v) / alpha, rtol=1e-12)
        np.testing.assert_allclose(comp.alpha_blocks, [alpha], rtol=1e-12)  # one block: one alpha
        np.testing.assert_array_equal(mean, local)
    assert comp.comm.bytes_sent == 8 * d + 2 * (d + 3)  # then int8 + the 3 header slots
    np.testing.assert_allclose(comp.state["r"], [r], rtol=1e-12)


@pytest.mark.parametrize("block_size", [None, 2])
def test_alpha_uses_the_step_size_of_each_call(block_size):
    """An LR schedule: alpha (its eps term included) is computed with the lr passed at this step."""
    d, eps = 4, 10.0  # eps large enough that its term matters
    comp = make(IntCompressor, d, eps=eps, beta=0.0, block_size=block_size, rounding="deterministic")
    v, mean = np.ones(d), np.empty(d)
    comp.exchange(v, 0, np.zeros(d), 0.9, mean)
    x = np.zeros(d)
    for k, lr in enumerate((0.7, 0.2, 0.05), start=1):
        x_prev, x = x, x + 0.01 * k
        comp.exchange(v, k, x, lr, mean)
        sizes = np.array([d] if block_size is None else [2, 2], dtype=float)
        r = np.add.reduceat((x - x_prev) ** 2, np.arange(0, d, block_size or d))
        want = lr * np.sqrt(sizes) / np.sqrt(2 * r + lr**2 * (sizes / d) * eps**2)
        np.testing.assert_allclose(comp.alpha_blocks, want, rtol=1e-12)


def test_block_alpha_follows_alg2():
    d, lr, eps, n = 7, 0.3, 0.5, 1
    comp = make(IntCompressor, d, eps=eps, block_size=3, rounding="deterministic", wire_dtype="int64")
    v = np.linspace(-3, 3, d)
    x0, x1 = np.zeros(d), np.array([0.1, 0.1, 0.1, 1.0, 1.0, 1.0, 0.01])
    mean, local = np.empty(d), np.empty(d)
    comp.exchange(v, 0, x0, lr, mean, local)
    comp.exchange(v, 1, x1, lr, mean, local)
    alphas, per_block = [], []
    for lo, hi in ((0, 3), (3, 6), (6, 7)):
        dl, r = hi - lo, float(np.sum(x1[lo:hi] ** 2))
        per_block.append(lr * math.sqrt(dl) / math.sqrt(2 * n * r + lr**2 * (dl / d) * eps**2))
        alphas += [per_block[-1]] * dl
    alphas = np.array(alphas)
    np.testing.assert_allclose(local, np.rint(alphas * v) / alphas, rtol=1e-12)
    np.testing.assert_allclose(comp.alpha_blocks, per_block, rtol=1e-12)


@pytest.mark.parametrize("kernel", ["numpy", "numba"])
@pytest.mark.parametrize("starts", [[0, 100, 250], list(range(0, 300, 4))], ids=["slice-fill", "gather"])
def test_block_alpha_reaches_every_coordinate_of_its_block(starts, kernel):
    """With the numpy kernel long blocks (>= 64 coordinates on average) get alpha by one slice fill
    per block, short ones by a gather; the numba kernel takes one alpha per block as it is: every
    way, coordinate j is scaled by its own block's alpha."""
    if kernel == "numba":
        pytest.importorskip("numba")
    d, lr, eps = 300, 0.3, 0.5
    comp = make(IntCompressor, d, eps=eps, block_starts=starts, rounding="deterministic", wire_dtype="int64",
                kernel=kernel)
    if kernel == "numpy":
        assert (comp._fill is not None) == (len(starts) == 3)  # both ways of spreading alpha are exercised
    else:
        assert comp.takes_blocks and comp._fill is None and comp._alpha_vec is None
    rng = np.random.default_rng(5)
    v, x1 = rng.standard_normal(d), rng.standard_normal(d) * 0.01
    mean, local = np.empty(d), np.empty(d)
    comp.exchange(v, 0, np.zeros(d), lr, mean, local)
    comp.exchange(v, 1, x1, lr, mean, local)
    bounds = list(zip(starts, starts[1:] + [d]))
    want = np.concatenate([np.full(hi - lo, lr * math.sqrt(hi - lo) / math.sqrt(
        2 * float(np.sum(x1[lo:hi] ** 2)) + lr ** 2 * ((hi - lo) / d) * eps ** 2)) for lo, hi in bounds])
    np.testing.assert_allclose(local, np.rint(want * v) / want, rtol=1e-12)


def test_alpha0_makes_the_first_step_integer_and_constant_keeps_it():
    d = 5
    v = np.arange(d, dtype=float)
    for alpha in ("adaptive", "constant"):
        comp = make(IntCompressor, d, alpha=alpha, alpha0=4.0, rounding="deterministic")
        mean, local = np.empty(d), np.empty(d)
        comp.exchange(v, 0, np.zeros(d), LR, mean, local)
        np.testing.assert_array_equal(mean, v)
        assert comp.comm.bytes_sent == d + 3
        comp.exchange(v, 1, np.ones(d), LR, mean, local)
        if alpha == "constant":
            np.testing.assert_array_equal(local, v)
    self_comm = MPICommunicator(MPI.COMM_SELF)
    assert IntCompressor.describe(IntCompressor.resolve({}, self_comm))["first_step"].startswith("float64")
    assert IntCompressor.describe(IntCompressor.resolve({"alpha0": 2.0}, self_comm))["first_step"] == "int (alpha0)"


def test_fill_alpha_fills_int8_keeps_the_first_steps_int16_floor_and_decides_the_dtype_from_the_exponents():
    """alpha='fill': alpha = max(T8 / 2^e, floor) with 2^e >= max|v| > 2^(e-1), T8 = 127 (one rank);
    floor = T16 / 2^e1 of the first integer step, T16 = 32767 // 2, kept while |v| shrinks. The wire
    dtype is the narrowest that holds alpha 2^e, known to every rank from the exponents: a step sends
    an int16 exponent and the d integers, no header, never redone (int32 when |v| outgrows the floor)."""
    d = 4
    comp = make(IntCompressor, d, alpha="fill", rounding="deterministic")
    mean, local = np.empty(d), np.empty(d)
    v = np.array([0.3, -1.5, 0.02, 1.0])  # max 1.5: e = 1
    comp.exchange(v, 0, np.zeros(d), LR, mean, local)
    np.testing.assert_array_equal(mean, v)  # the first step sends floats, as with the paper's rule
    comp.exchange(v, 1, np.ones(d), LR, mean, local)
    floor = 16383 / 2.0
    np.testing.assert_array_equal(comp.alpha_blocks, [floor])
    np.testing.assert_allclose(local, np.rint(floor * v) / floor, rtol=0, atol=0)
    assert comp.state["steps_by_wire"][2] == 1  # int16: floor * 1.5 > int8's bound
    # e = -2: 127 * 2^2 < floor, int16; e = -19: 127 * 2^19 > floor, int8; e = 4: floor * 2^4 > 32767, int32
    for scale, want, width in ((0.1, floor, 2), (2.0 ** -20, 127 * 2.0 ** 19, 1), (10.0, floor, 4)):
        sent = comp.comm.bytes_sent
        comp.exchange(v * scale, 2, np.ones(d), LR, mean, local)
        np.testing.assert_array_equal(comp.alpha_blocks, [want])
        np.testing.assert_allclose(local, np.rint(want * v * scale) / want, rtol=0, atol=0)
        assert comp.comm.bytes_sent - sent == 2 + width * d  # an int16 exponent, the integers
    np.testing.assert_array_equal(comp.state["alpha_floor"], [floor])
    assert comp.clipped == 0 and comp.summary()["redone_steps"] == 0
    assert comp.summary()["steps_by_wire"] == {"float64": 1, "int8": 1, "int16": 2, "int32": 1}
    with pytest.raises(Failed):  # a non-finite value: every rank learns it from the exponents' MAX
        comp.exchange(np.array([0.3, np.nan, 0.0, 1.0]), 3, np.ones(d), LR, mean, local)


@pytest.mark.parametrize("peak", [0.0, 5e-324, 2.0 ** -1060, 1e-300, 0.5, 1.0, 1.5, 3.0, 2.0 ** 1023, 1.7e308,
                                  np.inf, np.nan])
def test_one_blocks_exponent_arithmetic_in_python_gives_the_array_codes_values(peak):
    """With one alpha block the exponent rules compute in Python floats (numpy's calls on one value
    cost more than the arithmetic); the exponent, bound / 2^e and the fill rule's dtype equal the
    array code's, which several blocks take, for zero, subnormal, exact powers of two, the largest
    values and non-finite peaks."""
    one, two = make(IntCompressor, 4, alpha="fill"), make(IntCompressor, 4, alpha="fill", block_size=2)
    assert one._one_host_block and not two._one_host_block
    e1 = one._max_exponents(None, peak=np.array([peak])).copy()
    e2 = two._max_exponents(None, peak=np.array([peak, peak]))
    assert e1.dtype == e2.dtype == np.int64 and e1.tolist() == e2[:1].tolist()
    assert one._non_finite(e1) == two._non_finite(e2) == (not math.isfinite(peak))
    for bound in (127.0, 8191.0, float(2 ** 62)):
        np.testing.assert_array_equal(one._scaled(e1, bound), two._scaled(e2, bound)[:1])
    for alpha in (1.0, 8191.5, 1e300):
        one.alpha_blocks[...], two.alpha_blocks[...] = alpha, alpha
        assert one._fill_level(e1) == two._fill_level(e2)


def test_exponent_alpha_scales_every_step_by_the_largest_value_without_a_floor():
    """alpha='exponent': alpha = floor(M / n) / 2^e at every step, the first included (no float step,
    no x^{k-1} needed, no floor: a shrinking |v| keeps filling int8), one int16 exponent a step and the
    integers without a header (the exponents say they fit); a non-finite value stops the step."""
    d = 6
    comp = make(IntCompressor, d, alpha="exponent", rounding="deterministic")
    mean = np.empty(d)
    v = np.array([0.3, -2.5, 1.0, 0.0, 0.75, -4.0])
    for k, scale in enumerate((1.0, 2.0 ** -10, 3.0)):  # max |v| = 4, 2^-8, 12: e = 2, -8, 4
        sent = comp.comm.bytes_sent
        comp.exchange(v * scale, k, np.full(d, float(k)), LR, mean)
        alpha = 127.0 / 2.0 ** (2, -8, 4)[k]
        np.testing.assert_array_equal(comp.alpha_blocks, [alpha])
        np.testing.assert_array_equal(mean, np.rint(alpha * v * scale) / alpha)
        assert comp.comm.bytes_sent - sent == 2 + d  # an int16 exponent and the int8 integers
    assert comp.summary()["steps_by_wire"] == {"int8": 3} and comp.summary()["max_abs_q"] == 127
    with pytest.raises(Failed):  # every rank learns of a non-finite value from the exponents' MAX
        comp.exchange(np.r_[v[:-1], np.nan], 3, np.ones(d), LR, mean)
    self_comm = MPICommunicator(MPI.COMM_SELF)
    assert "every step" in IntCompressor.describe(IntCompressor.resolve({"alpha": "exponent"}, self_comm))["first_step"]
    given = IntCompressor.resolve({"alpha": "exponent", "alpha0": 1.0}, self_comm)  # alpha0: the first step's
    assert IntCompressor.describe(given)["first_step"] == "int (alpha0)"
    comp = make(IntCompressor, d, alpha="exponent", alpha0=3.0, rounding="deterministic")
    x = np.zeros(d)
    comp.exchange(v, 0, x, LR, mean)
    assert comp.alpha_blocks[0] == 3.0
    comp.exchange(v, 1, x, LR, mean)
    assert comp.alpha_blocks[0] == 127 / 2.0 ** np.ceil(np.log2(np.abs(v).max()))  # then the largest |v| fills int8


def test_alpha_rule_names_and_the_methods_defaults(problem):
    self_comm = MPICommunicator(MPI.COMM_SELF)
    assert IntCompressor.resolve({}, self_comm)["alpha"] == "paper"
    assert IntCompressor.resolve({"alpha": "adaptive"}, self_comm)["alpha"] == "paper"  # the earlier name
    with pytest.raises(InputError, match="alpha"):
        IntCompressor.resolve({"alpha": "largest"}, self_comm)
    rule = {m: mpiopt.minimize(problem, m, iters=0, batch=16, **o).trace["config"]["alpha"]
            for m, o in (("intsgd", {}), ("intdiana", {}), ("vr-intdiana", {}), ("vr-diana", {"compressor": "int"}))}
    assert rule == {"intsgd": "paper", "intdiana": "paper", "vr-intdiana": "exponent", "vr-diana": "exponent"}
    assert mpiopt.minimize(problem, "vr-intdiana", iters=0, batch=16, alpha="paper").trace["config"]["alpha"] == "paper"


def test_exponent_first_step_sends_integers_scaled_by_the_largest_value():
    d = 6
    comp = make(IntCompressor, d, first_step="exponent", rounding="deterministic")
    v = np.array([0.3, -2.5, 1.0, 0.0, 0.75, -4.0])
    mean = np.empty(d)
    comp.exchange(v, 0, np.zeros(d), LR, mean)
    alpha = 127.0 / 4.0  # floor(127 / 1) / 2^2, with 2^2 >= max |v| = 4
    np.testing.assert_array_equal(comp.alpha_blocks, [alpha])
    np.testing.assert_array_equal(mean, np.rint(alpha * v) / alpha)
    assert comp.comm.bytes_sent == 2 + d and comp.state["max_abs_q"] == 127  # one int16 exponent, then int8
    zero = make(IntCompressor, d, first_step="exponent", block_size=3)
    zero.exchange(np.r_[np.zeros(3), np.full(3, 1e-300)], 0, np.zeros(d), LR, mean)
    assert np.isfinite(zero.alpha_blocks).all() and mean[:3].tolist() == [0.0] * 3
    with pytest.raises(Failed):
        make(IntCompressor, d, first_step="exponent").exchange(np.r_[v[:-1], np.inf], 0, np.zeros(d), LR, mean)
    self_comm = MPICommunicator(MPI.COMM_SELF)
    assert IntCompressor.describe(IntCompressor.resolve({"first_step": "exponent"}, self_comm))["first_step"].startswith("int")
    with pytest.raises(InputError, match="alpha0 .* or --first-step exponent, not both"):
        IntCompressor.resolve({"first_step": "exponent", "alpha0": 1.0}, self_comm)


def test_auto_promotes_then_shrinks_back_and_never_clips():
    d = 4
    comp = make(IntCompressor, d, alpha="constant", alpha0=1.0, rounding="deterministic")
    mean, x = np.empty(d), np.zeros(d)
    big, small = np.array([200.0, -3.0, 0.0, 1.0]), np.array([5.0, -3.0, 0.0, 1.0])
    comp.exchange(big, 0, x, LR, mean)  # int8 (max 127) overflows: MAX Allreduce, then int16
    np.testing.assert_array_equal(mean, big)
    assert comp.clipped == 0 and comp.comm.bytes_sent == (d + 3) + 8 + 2 * d
    assert int(comp.state["redone_steps"]) == 1 and comp.summary()["wire_dtype_next"] == "int16"
    sent = comp.comm.bytes_sent
    for k in range(SHRINK_AFTER):  # fits int8 with a bit to spare: shrinks after SHRINK_AFTER steps
        comp.exchange(small, 1 + k, x, LR, mean)
        np.testing.assert_array_equal(mean, small)
    assert comp.comm.bytes_sent == sent + SHRINK_AFTER * 2 * (d + 3)
    assert comp.summary() == {"steps_by_wire": {"int16": 1 + SHRINK_AFTER}, "max_abs_q": 200.0,
                              "redone_steps": 1, "wire_dtype_next": "int8", "kernel": comp.opts["kernel"]}
    huge = np.array([3e19, 1.0, 0.0, -1.0])  # beyond int64's floor(M / n): clipped and counted
    comp.exchange(huge, 99, x, LR, mean)
    assert comp.clipped == 1 and mean[0] == 2.0**63 - 1024  # the largest double below 2^63 - 1, not a wrap


def test_fixed_int8_clips_and_counts():
    d = 3
    comp = make(IntCompressor, d, alpha="constant", alpha0=1.0, wire_dtype="int8", rounding="deterministic")
    mean = np.empty(d)
    comp.exchange(np.array([300.0, -128.0, 5.0]), 0, np.zeros(d), LR, mean)
    assert comp.clipped == 2 and mean.tolist() == [127.0, -127.0, 5.0]
    assert comp.comm.bytes_sent == d + 3 and int(comp.state["redone_steps"]) == 0


@pytest.mark.parametrize("cls,opts", [(IntCompressor, {"alpha0": 1.0}), (IntCompressor, {}),
                                      (IntCompressor, {"alpha0": 1.0, "wire_dtype": "int8"}),
                                      (HintCompressor, {}), (NatCompressor, {}), (QSGDCompressor, {}),
                                      (NoCompression, {})])
def test_non_finite_values_call_fail_with_the_local_flag(cls, opts):
    comp = make(cls, 4, **opts)
    with pytest.raises(Failed) as err:
        comp.exchange(np.array([1.0, np.nan, 2.0, np.inf]), 3, np.zeros(4), LR, np.empty(4), np.empty(4))
    assert err.value.args == (3, True)


def test_a_sum_that_overflows_is_not_mistaken_for_a_non_finite_value():
    comp = make(NoCompression, 2, float_dtype="float32")
    big = np.array([3e38, 3e38], dtype=np.float32)  # finite, but their float32 sum is inf
    mean = np.empty(2, dtype=np.float32)
    comp.exchange(big, 0, np.zeros(2), LR, mean)
    np.testing.assert_array_equal(mean, big)
    assert all_finite(big) and not all_finite(np.array([1.0, np.nan])) and not all_finite(np.array([-np.inf]))


@pytest.mark.parametrize("kernel", ["numba", "numpy"])
@pytest.mark.parametrize("cls,opts", [(IntCompressor, {}), (IntCompressor, {"alpha0": 40.0}),
                                      (IntCompressor, {"alpha": "constant", "alpha0": 3.0}),
                                      (IntCompressor, {"block_size": 5, "wire_dtype": "int16"}),
                                      (HintCompressor, {}), (NatCompressor, {}), (QSGDCompressor, {}),
                                      (NoCompression, {}), (NoCompression, {"float_dtype": "float32"})])
@pytest.mark.parametrize("x_dtype", [np.float64, np.float32])
def test_exchange_update_is_exchange_then_the_numpy_update(monkeypatch, kernel, cls, opts, x_dtype):
    """The SGD step every compressor offers (IntSGD decodes straight into x) has the bits of
    ``exchange`` followed by ``x -= lr * mean``, over steps that send floats, int8 and wider ints.
    ``none`` keeps gradient descent's own update, x -= sum * (lr / n) in the wire's dtype (the bits
    of the gd and sgd iterates before compressors were composed)."""
    pytest.importorskip(kernel)
    monkeypatch.setenv(KERNEL_ENV, kernel)
    d, lr = 13, 0.3
    rng = np.random.default_rng(4)
    fused, plain = make(cls, d, **opts), make(cls, d, **opts)
    gd_update = cls is NoCompression
    x1 = rng.standard_normal(d).astype(x_dtype)
    x2 = x1.copy()
    mean1 = np.empty(d, dtype=x_dtype)
    mean2 = np.empty(d, dtype=opts.get("float_dtype", "float64") if gd_update else x_dtype)
    for k in range(40):
        v = rng.standard_normal(d) * (1.0 if k % 7 else 30.0)
        fused.exchange_update(v, k, x1, lr, mean1)
        plain.exchange(v, k, x2, lr, mean2)
        if gd_update:
            assert plain.n == 1  # so the mean, in the wire's dtype, is the sum itself
            mean2 *= lr / plain.n
            x2 -= mean2
        else:
            x2 -= lr * mean2
        np.testing.assert_array_equal(x1, x2)
        assert fused.bits == plain.bits and fused.clipped == plain.clipped
    if cls is IntCompressor:
        assert fused.summary() == plain.summary() and fused.summary()["kernel"] == kernel


def _diana_step(comp, arrays, v, k, x, lr):
    """One DIANA step around ``comp`` (IntDIANA's): the shifted exchange, then the shifts' and x's update."""
    h_local, h, delta, mean, local, scratch = arrays
    comp.shifted_exchange(v, h_local, k, x, lr, delta, mean, local)
    comp.shift_update(h_local, h, x, lr, 1.0, mean, local, scratch)


@pytest.mark.parametrize("step,x_dtype", [("intsgd", np.float64), ("intsgd", np.float32), ("intdiana", np.float64)])
def test_the_update_sums_its_move_for_the_next_alpha(monkeypatch, step, x_dtype):
    """With the paper's alpha and the numba kernel, IntSGD's update (and IntDIANA's shift update) also
    sums x's squared move, so the next step's alpha makes no pass over x and x_prev of its own; a
    resumed state, a write to x from outside (``iterate_changed``), another x array and a step with
    lr 0 each make the pass again. The iterates and the state are the numpy kernel's (no such
    shortcut) at every step."""
    pytest.importorskip("numba")
    d = 5000
    passes = []

    def counted():
        comp = make(IntCompressor, d)
        squares = comp.quant.step_squares_sum
        monkeypatch.setattr(comp.quant, "step_squares_sum", lambda x, prev: passes.append(1) or squares(x, prev))
        return comp

    monkeypatch.setenv(KERNEL_ENV, "numpy")
    plain = make(IntCompressor, d)
    monkeypatch.setenv(KERNEL_ENV, "numba")
    fused = counted()
    rng = np.random.default_rng(6)
    x1 = rng.standard_normal(d).astype(x_dtype)
    x2 = x1.copy()
    arrays1, arrays2 = ([np.zeros(d, dtype=x_dtype) for _ in range(6)] for _ in range(2))
    expected = []
    for k in range(16):
        v = rng.standard_normal(d) * (1.0 if k % 5 else 40.0)
        lr = 0.0 if k == 9 else LR
        if k == 6:
            x1[3] += 1.0
            x2[3] += 1.0
            fused.iterate_changed()
        if k == 12:
            x1 = x1.copy()
        if k == 14:
            resumed = counted()
            for key, value in fused.state.items():
                resumed.state[key][...] = value
            fused = resumed
        before = len(passes)
        if step == "intsgd":
            fused.exchange_update(v, k, x1, lr, arrays1[3])
            plain.exchange_update(v, k, x2, lr, arrays2[3])
        else:
            _diana_step(fused, arrays1, v, k, x1, lr)
            _diana_step(plain, arrays2, v, k, x2, lr)
            np.testing.assert_array_equal(arrays1[0], arrays2[0])  # h_i
            np.testing.assert_array_equal(arrays1[1], arrays2[1])  # h
        np.testing.assert_array_equal(x1, x2)
        for key in plain.state:
            np.testing.assert_array_equal(fused.state[key], plain.state[key], err_msg=key)
        expected.append(len(passes) - before)
    assert fused.quant.tracks_move and not getattr(plain.quant, "tracks_move", False)
    # step 0 sends floats; 1 makes the pass; 6 after the write; 9 (lr 0) none, 10 again; 12 another x;
    # 14 the resumed compressor
    assert expected == [0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 1, 0, 1, 0]


class ManyRanks:
    """What ``resolve`` reads of a communicator (``size``, ``int_dtypes``), for 200 ranks: an option
    check is a pure function of them, and 200 real ranks would cost minutes for one raise."""

    size = 200
    int_dtypes = INT_DTYPES


def test_option_checks_say_what_to_do():
    with pytest.raises(InputError, match="cannot carry a sum over 200 ranks"):
        IntCompressor.resolve({"wire_dtype": "int8"}, ManyRanks())
    assert IntCompressor.resolve({"wire_dtype": "int16"}, ManyRanks())["wire_dtype"] == "int16"
    with pytest.raises(InputError, match="--alpha constant needs --alpha0"):
        make(IntCompressor, 3, alpha="constant")
    with pytest.raises(InputError, match="beta= must be in"):
        make(IntCompressor, 3, beta=1.0)
    with pytest.raises(InputError, match="block_size= must be a positive integer"):
        make(IntCompressor, 3, block_size=0)
    with pytest.raises(InputError, match="bits= must be one of 8, 16, 32, 64"):
        make(HintCompressor, 3, bits=12)
    with pytest.raises(InputError, match="levels= must be an integer"):
        make(QSGDCompressor, 3, levels=40000)


# ------------------------------------------------------------------------------------------------
# The methods through mpiopt.minimize


def test_every_method_is_registered():
    assert set(MINE) <= set(METHODS)
    assert METHODS["intdiana"][1] == {"compressor": "int"} and METHODS["vr-intdiana"][1] == {"compressor": "int"}


@pytest.mark.parametrize("method,opts", [(m, {}) for m in MINE] + [
    ("vr-diana", {"compressor": c}) for c in ("int", "hint", "nat", "qsgd")] + [
    ("diana", {"compressor": "nat"}), ("intsgd", {"block_size": 8}), ("intsgd", {"rounding": "deterministic"}),
    ("hintsgd", {"bits": 16}), ("qsgd", {"levels": 16}), ("l-svrg", {"float_dtype": "float32"})])
def test_method_decreases_the_loss(problem, method, opts):
    res = mpiopt.minimize(problem, method, iters=300, batch=16, seed=2, log_every=300, **opts)
    loss = res.trace["history"]["loss"]
    assert loss[-1] < loss[0] - 0.03, (method, loss)
    assert res.trace["wire"]["compressor"] == res.trace["config"]["compressor"]


def test_vr_methods_share_one_theory_step_size(problem):
    lrs = {m: mpiopt.minimize(problem, m, iters=0, batch=16).trace["config"]["lr"]
           for m in ("l-svrg", "vr-intdiana", "vr-diana")}
    b, Li = 16, problem.smoothness()
    Lb = (1 - 1 / b) * Li + problem.sample_smoothness() / b
    expected = 1 / (2 * (Li + 3 * Lb / 2 + 3 * Lb / 16))  # n = 1, L = L_1
    assert lrs == pytest.approx({k: expected for k in lrs}, rel=1e-12)
    nat = mpiopt.minimize(problem, "vr-diana", compressor="nat", iters=0, batch=16).trace["config"]
    assert nat["lr"] == pytest.approx(expected / (1 + 2 / 8)) and nat["omega"] == 1 / 8
    sgd = mpiopt.minimize(problem, "sgd", iters=0).trace["config"]["lr"]
    assert mpiopt.minimize(problem, "intsgd", iters=0).trace["config"]["lr"] == sgd
    assert mpiopt.minimize(problem, "natsgd", iters=0).trace["config"]["lr"] == pytest.approx(sgd / 1.25)


def test_trace_counts_bytes_and_wire_dtypes(problem):
    d, iters = problem.dim, 50
    res = mpiopt.minimize(problem, "vr-intdiana", iters=iters, batch=16, log_every=10, alpha="paper")
    assert res.trace["history"]["wire_bytes"][-1] == 8 * d + (iters - 1) * (d + 3)
    assert res.trace["config"]["first_step"].startswith("float64")
    wire = res.trace["wire"]
    assert wire["steps_by_wire"] == {"float64": 1, "int8": iters - 1} and 0 < wire["max_abs_q"] <= 127
    res = mpiopt.minimize(problem, "l-svrg", iters=iters, batch=16, log_every=10)
    assert res.trace["history"]["wire_bytes"][-1] == iters * 8 * d
    fill = mpiopt.minimize(problem, "vr-intdiana", iters=iters, batch=16, log_every=10, alpha="fill")
    steps = fill.trace["wire"]["steps_by_wire"]  # its floor: int16 first, then int8 once the shift has learnt
    assert fill.trace["config"]["alpha"] == "fill" and steps["float64"] == 1 and sum(steps.values()) == iters
    sizes = {"int8": 1, "int16": 2, "int32": 4, "int64": 8}
    assert steps["int16"] >= 1 and steps["int8"] >= 1 and fill.trace["wire"]["redone_steps"] == 0
    sent = sum(c * d * sizes[w] for w, c in steps.items() if w != "float64")  # no header, nothing redone
    assert fill.trace["history"]["wire_bytes"][-1] == 8 * d + sent + 2 * (iters - 1)  # + an int16 exponent a step
    default = mpiopt.minimize(problem, "vr-intdiana", iters=iters, batch=16, log_every=10).trace
    assert default["config"]["alpha"] == "exponent" and default["wire"]["steps_by_wire"] == {"int8": iters}
    assert default["history"]["wire_bytes"][-1] == iters * (d + 2)  # every step int8 and an int16 exponent


def test_diana_shift_h_is_the_mean_of_the_h_i(problem):
    from mpiopt.methods import make_method
    from mpiopt.run import as_communicator, make_context

    ctx = make_context(problem, as_communicator(None), 0, None, 16, None, None)
    meth = make_method("vr-intdiana", ctx)
    x = np.zeros(problem.dim)
    meth.start(x)
    for k in range(40):
        meth.step(x, k)
        assert np.array_equal(meth.state["h"], meth.state["h_local"])  # one rank: h == h_1 bit for bit


@pytest.mark.parametrize("method,opts", [("vr-intdiana", {}), ("intsgd", {"alpha": "constant", "alpha0": 3e4}),
                                         ("vr-diana", {"compressor": "nat"}), ("hintsgd", {})])
def test_checkpoint_resume_is_bit_identical(problem, tmp_path, method, opts):
    common = dict(iters=60, batch=8, seed=4, log_every=10, **opts)
    straight = mpiopt.minimize(problem, method, **common)
    ckpt = dict(checkpoint_dir=tmp_path, checkpoint_every=10)
    first = mpiopt.minimize(problem, method, callback=lambda k, x: k == 30, **ckpt, **common)
    assert first.status == "callback"
    resumed = mpiopt.minimize(problem, method, resume=True, **ckpt, **common)
    assert resumed.trace["resumed_from"] == 30
    assert np.array_equal(resumed.x, straight.x)
    for column in ("loss", "wire_bytes", "info_bits", "clipped"):
        assert resumed.trace["history"][column] == straight.trace["history"][column]
    assert resumed.trace["wire"] == straight.trace["wire"]


def test_options_of_another_compressor_are_refused(problem):
    with pytest.raises(InputError, match="compressor nat does not use option.*wire_dtype"):
        mpiopt.minimize(problem, "vr-diana", compressor="nat", wire_dtype="int8", iters=1)
    with pytest.raises(InputError, match=r"method 'natsgd' with compressor nat does not use option\(s\) wire_dtype"):
        mpiopt.minimize(problem, "natsgd", wire_dtype="int8", iters=1)
    with pytest.raises(InputError, match=r"method 'natsgd' does not take option\(s\) colour"):
        mpiopt.minimize(problem, "natsgd", colour="red", iters=1)
    with pytest.raises(InputError, match="fixes compressor='int'"):
        mpiopt.minimize(problem, "intdiana", compressor="nat", iters=1)
    with pytest.raises(InputError, match=r"\bp= must be in \(0, 1\]"):
        mpiopt.minimize(problem, "l-svrg", p=1.5, iters=1)
    with pytest.raises(InputError, match="unknown compressor"):
        mpiopt.minimize(problem, "diana", compressor="zip", iters=1)
    with pytest.raises(InputError, match="levels= must be an integer"):
        mpiopt.minimize(problem, "qsgd", levels=0, iters=1)
    with pytest.raises(InputError, match="eps= must be a positive number"):
        mpiopt.minimize(problem, "intsgd", eps=0.0, lr=0.1, iters=1)


def test_block_starts_layouts_run_and_bad_ones_are_refused(problem):
    d = problem.dim
    res = mpiopt.minimize(problem, "intsgd", iters=3, batch=4, block_starts=[0, 10, d - 1])
    assert res.status == "max_iter"
    for bad, match in (([5], "ascend strictly from 0"), ([0, 7, 7], "ascend strictly"), ([0, d], "below d")):
        with pytest.raises(InputError, match=match):
            mpiopt.minimize(problem, "intsgd", iters=1, block_starts=bad)
    with pytest.raises(InputError, match="not both"):
        mpiopt.minimize(problem, "intsgd", iters=1, block_size=8, block_starts=[0, 8])


def test_a_name_that_fixes_the_compressor_does_not_offer_the_compressor_option(problem):
    """natsgd fixes compressor='nat' (and refuses one given), so its list of options must not offer it."""
    with pytest.raises(InputError, match="fixes compressor='nat'"):
        mpiopt.minimize(problem, "natsgd", compressor="qsgd", iters=1)
    with pytest.raises(InputError, match="it takes: ") as err:
        mpiopt.minimize(problem, "natsgd", wire_dtype="int8", iters=1)
    takes = str(err.value).split("it takes: ")[1].split(", ")
    assert "compressor" not in takes and "kernel" in takes


@pytest.mark.parametrize("options", [dict(first_step="float"), dict(first_step="exponent"),
                                     dict(first_step="exponent", block_starts=[0, 5, 40, 41, 90]),
                                     dict(first_step="float", block_starts=[0, 5, 40, 41, 90], wire_dtype="int32")])
def test_a_layout_sends_each_coordinates_integers_from_its_place(options):
    """``layout`` (the DDP hook's in-place path, numba kernel): v and the mean hold the coordinates in
    another order; every step's mean is the plain compressor's, each value moved to its place, and
    alpha, x_prev and the counters are the same (float32 buffers, as a DDP bucket's)."""
    pytest.importorskip("numba")
    d = 100
    runs = [(0, 90, 10), (10, 41, 49), (59, 0, 5), (64, 5, 35), (99, 40, 1)]
    rng = np.random.default_rng(4)
    plain, moved = make(IntCompressor, d, kernel="numba", **options), make(IntCompressor, d, kernel="numba",
                                                                          layout=runs, **options)
    x = np.zeros(d, dtype=np.float32)
    mean_plain, mean_moved = np.empty(d, dtype=np.float32), np.empty(d, dtype=np.float32)
    for k in range(6):
        v = rng.standard_normal(d).astype(np.float32) * (10.0 if k == 3 else 1.0)
        x -= 0.1 * v
        plain.exchange(v, k, x, LR, mean_plain)
        moved.exchange(place(v, runs), k, x, LR, mean_moved)
        np.testing.assert_array_equal(place(mean_plain, runs), mean_moved)
        np.testing.assert_array_equal(plain.alpha_blocks, moved.alpha_blocks)
        assert plain.bits == moved.bits
    assert plain.state["steps_by_wire"].tolist() == moved.state["steps_by_wire"].tolist()
    moved.set_layout([(0, 0, d)])
    plain.exchange(v, 6, x, LR, mean_plain)
    moved.exchange(v, 6, x, LR, mean_moved)
    np.testing.assert_array_equal(mean_plain, mean_moved)


def place(values, runs):
    """values (coordinate order) at the positions of the (position, coordinate, count) ``runs``."""
    out = np.empty_like(values)
    for pos, coord, count in runs:
        out[pos:pos + count] = values[coord:coord + count]
    return out


def test_a_layout_needs_the_numba_kernel():
    with pytest.raises(InputError, match="layout"):
        make(IntCompressor, 4, kernel="numpy", layout=[(0, 0, 4)])
    with pytest.raises(InputError, match="layout"):
        make(IntCompressor, 4).set_layout([(0, 0, 4)])
