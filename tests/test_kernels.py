"""The numpy quantizer kernel: the documented noise formula, unbiased rounding, clipping, no allocation.

Monte Carlo tolerances are 5 standard deviations of the estimate for the sample size used (fixed
seeds, so the outcome is reproducible); the variance of a rounding is f (1 - f) <= 1/4 for a
fractional part f.
"""

import math
import tracemalloc

import numpy as np
import pytest

from mpiopt.kernels import Quantizer, int_bound, stream_key
from mpiopt.kernels.numpy import GOLDEN, MASK, mix64

T = np.array([-2.75, -1.5, -0.1, 0.0, 0.3, 0.5, 0.999, 3.25, 7.0, -1e6 - 0.625])


def reference_noise(seed: int, worker: int, step: int, d: int):
    """The formula of the kernel's docstring in plain Python integers (the CuPy kernel's contract)."""
    def mix(z):
        z &= MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    g = 0x9E3779B97F4A7C15
    key = mix(mix(mix((seed & MASK) + g) + worker + g) + (step & MASK) + g)
    return [(mix(key + (j + 1) * g) >> 11) * 2.0 ** -53 for j in range(d)]


@pytest.mark.parametrize("seed,worker,step", [(0, 0, 0), (7, 3, 12345), (2**40 + 5, 11, 2**33), (2**64 - 1, 0, 1)])
def test_noise_is_the_documented_splitmix64_formula(seed, worker, step):
    q = Quantizer(37, seed, worker)
    assert q.noise(step).tolist() == reference_noise(seed, worker, step, 37)
    assert stream_key(seed, worker, step) == mix64(mix64(mix64((seed & MASK) + GOLDEN) + worker + GOLDEN)
                                                   + (step & MASK) + GOLDEN)


def test_noise_drawn_in_blocks_of_steps_is_each_steps_formula():
    """A small vector draws many steps' noise at once (keys computed as an array): every row of the
    blocks, across block boundaries, after a jump back and across step 2**64's wrap, is the formula."""
    q = Quantizer(16, 7, 3)
    for step in [*range(0, 600, 7), 5, 2**64 - 3, 2**64 - 1, 2**64, 2**64 + 300]:
        assert q.noise(step).tolist() == reference_noise(7, 3, step, 16), step


def test_noise_is_uniform_on_unit_interval():
    u = Quantizer(200_000, 3, 1).noise(9)
    assert 0.0 <= u.min() and u.max() < 1.0
    n = u.size  # mean 1/2 (sd 1/sqrt(12 n)), variance 1/12 (sd sqrt(1/180 n))
    assert abs(u.mean() - 0.5) < 5 / math.sqrt(12 * n)
    assert abs(u.var() - 1 / 12) < 5 * math.sqrt(1 / (180 * n))


def test_same_key_same_integers_and_other_step_or_worker_other_noise():
    v = np.linspace(-5, 5, 1000)
    a, b = Quantizer(1000, 42, 3, 4), Quantizer(1000, 42, 3, 4)
    qa, qb = np.empty(1000, np.int32), np.empty(1000, np.int32)
    a.encode(v, 1.7, qa, step=8)
    b.encode(v, 1.7, qb, step=8)
    assert np.array_equal(qa, qb)
    n8 = a.noise(8).copy()
    assert np.array_equal(b.noise(8), n8)
    assert not np.array_equal(a.noise(9), n8)
    assert not np.array_equal(Quantizer(1000, 42, 4).noise(8), n8)
    assert not np.array_equal(Quantizer(1000, 43, 3).noise(8), n8)
    a.encode(v, 1.7, qa, step=9)
    assert not np.array_equal(qa, qb)


def test_random_rounding_is_unbiased_with_variance_at_most_a_quarter_over_steps():
    """One coordinate per value of T, rounded at N different steps."""
    n_steps = 4000
    q = Quantizer(T.size, 5, 2, 1)
    out = np.empty(T.size, np.int64)
    draws = np.empty((n_steps, T.size))
    for k in range(n_steps):
        q.encode(T, 1.0, out, step=k)
        draws[k] = out
    lo = np.floor(T)
    assert np.isin(draws - lo, (0.0, 1.0)).all()  # always floor(t) or floor(t) + 1
    f = T - lo
    sd = np.sqrt(f * (1 - f) / n_steps)
    assert (np.abs(draws.mean(axis=0) - T) <= 5 * sd + 1e-12).all()
    var = draws.var(axis=0)
    assert (var <= 0.25 + 5 * 0.25 / math.sqrt(n_steps)).all()
    # Bernoulli(f): the sample variance is within 5 sd (<= 1 / (4 sqrt(N))) of f (1 - f)
    assert (np.abs(var - f * (1 - f)) <= 5 * 0.25 / math.sqrt(n_steps) + 1e-12).all()


def test_random_rounding_is_unbiased_across_coordinates():
    reps = 50_000
    t = np.repeat(T, reps)
    q = Quantizer(t.size, 9, 0, 1)
    out = np.empty(t.size, np.int64)
    q.encode(t, 1.0, out, step=1)
    means = out.reshape(T.size, reps).mean(axis=1)
    f = T - np.floor(T)
    assert (np.abs(means - T) <= 5 * np.sqrt(f * (1 - f) / reps) + 1e-12).all()


def test_per_coordinate_alpha_scales_each_coordinate():
    v = np.array([1.0, 1.0, -2.0, 0.25])
    alpha = np.array([3.0, 10.0, 0.5, 8.0])
    q = Quantizer(4, 0, 0, 1, "deterministic")
    out = np.empty(4, np.int32)
    q.encode(v, alpha, out, step=0)
    assert out.tolist() == [3, 10, -1, 2]
    np.testing.assert_array_equal(q.decode_local(alpha, np.empty(4)), out / alpha)


def test_deterministic_rounding_is_numpy_rint():
    v = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999999999999994, 3.0, -7.2, 1e9 + 0.5])
    q = Quantizer(v.size, 0, 0, 1, "deterministic")
    out = np.empty(v.size, np.int64)
    q.encode(v, 1.0, out, step=123)
    np.testing.assert_array_equal(out, np.rint(v))
    assert out[:6].tolist() == [0, 2, 2, 0, -2, -2]


def test_clipping_to_the_per_rank_bound_is_counted():
    n = 4  # int8: floor(127 / 4) = 31 per rank, so a sum of 4 cannot wrap
    assert int_bound(np.int8, n) == 31 and int_bound(np.int16, 12) == 2730
    v = np.array([40.0, -40.0, 31.0, -31.0, 12.0, 0.0])
    q = Quantizer(v.size, 0, 0, n, "deterministic")
    out = np.empty(v.size, np.int8)
    assert q.encode(v, 1.0, out, step=0) == 2
    assert out.tolist() == [31, -31, 31, -31, 12, 0]
    assert q.max_abs == 40.0 and q.finite
    np.testing.assert_array_equal(q.sent, out)  # what was sent, for the local decode
    wide = np.empty(v.size, np.int16)
    assert q.pack(wide) == 0 and wide.tolist() == [40, -40, 31, -31, 12, 0]  # same values, wider dtype
    assert q.encode(v, 1.0, out, step=0, bound=5) == 5  # 40, -40, 31, -31, 12


def test_non_finite_inputs_are_zeroed_and_reported():
    v = np.array([1.0, np.nan, np.inf, -np.inf, -2.0])
    q = Quantizer(v.size, 0, 0, 2)
    out = np.full(v.size, 99, np.int16)
    q.encode(v, 1.0, out, step=0)
    assert not q.finite and out[1:4].tolist() == [0, 0, 0]
    assert out[0] in (1, 2) and out[4] in (-2, -1) and q.max_abs <= 2
    q.encode(np.ones(5), 1.0, out, step=1)
    assert q.finite


def test_decode_is_sum_over_n_alpha():
    s = np.array([-12, 0, 7, 127], dtype=np.int8)
    out = np.empty(4)
    Quantizer.decode(s, 0.5, 4, out)
    np.testing.assert_array_equal(out, s / (4 * 0.5))
    alpha = np.array([1.0, 2.0, 4.0, 8.0])
    Quantizer.decode(s, alpha, 4, out)
    np.testing.assert_allclose(out, s / alpha / 4, rtol=1e-15)


def test_buffers_are_reused_and_nothing_d_sized_is_allocated():
    d = 100_000
    q = Quantizer(d, 1, 0, 4)
    v = np.random.default_rng(0).standard_normal(d)
    out, mean = np.empty(d, np.int16), np.empty(d)
    q.encode(v, 3.0, out, step=0)
    buffers = (q.noise_buf, q.rounded, q._abs, q._z, q._scratch)
    noise = q.noise(1)
    tracemalloc.start()
    try:
        for k in range(3):
            q.encode(v, 3.0, out, step=k + 1)
            q.encode(v, 3.0, out, step=k + 1, bound=2)  # the clipping path too
            Quantizer.decode(out, 3.0, 4, mean)
            q.decode_local(3.0, mean)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < d * 8 // 4, f"{peak} bytes allocated: a d-sized temporary"  # numpy's casting buffer is 64 KiB
    assert q.noise(2) is noise
    assert all(a is b for a, b in zip((q.noise_buf, q.rounded, q._abs, q._z, q._scratch), buffers))


def test_bad_rounding_name():
    with pytest.raises(ValueError, match="rounding must be one of"):
        Quantizer(3, 0, 0, 1, "stochastic")


def test_clipping_to_the_int64_bound_does_not_wrap():
    """float(2**63 - 1) is 2**63, which int64 cannot hold: the clip uses the largest double below."""
    v = np.array([1e30, -1e30, 5.0])
    q = Quantizer(3, 0, 0, 1, "deterministic")
    out = np.empty(3, np.int64)
    assert q.encode(v, 1.0, out, step=0) == 2
    assert out.tolist() == [2**63 - 1024, -(2**63 - 1024), 5]


def test_float32_input_is_multiplied_in_double():
    v = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    q = Quantizer(v.size, 0, 0, 1, "deterministic")
    out = np.empty(v.size, np.int64)
    q.encode(v, 12345.678, out, step=0)
    np.testing.assert_array_equal(out, np.rint(v.astype(np.float64) * 12345.678))


@pytest.mark.parametrize("d", [5, 123, 3000])
def test_noise_drawn_for_several_steps_at_once_is_the_same_in_any_order(d):
    q = Quantizer(d, 11, 2)
    steps = [0, 1, 2, 15, 16, 17, 40, 3, 3, 2**33, 2**33 + 1, 7]
    for k in steps:
        assert q.noise(k).tolist() == reference_noise(11, 2, k, d), k


def test_cpu_kernel_is_numba_when_installed_for_long_vectors_and_the_environment_can_force_one(monkeypatch):
    from mpiopt.kernels import KERNEL_ENV, NUMBA_FROM, cpu_kernel, cpu_quantizer
    from mpiopt.kernels import numba as numba_kernel

    monkeypatch.delenv(KERNEL_ENV, raising=False)
    assert cpu_kernel() == ("numba" if numba_kernel.AVAILABLE else "numpy")
    assert cpu_kernel(size=NUMBA_FROM) == cpu_kernel() and cpu_kernel(size=NUMBA_FROM - 1) == "numpy"
    monkeypatch.setenv(KERNEL_ENV, "numpy")
    assert cpu_kernel() == "numpy" and isinstance(cpu_quantizer(4, 0, 0), Quantizer)
    monkeypatch.setenv(KERNEL_ENV, "fortran")
    with pytest.raises(ValueError, match="MPIOPT_KERNEL must be one of numba, numpy, got 'fortran'"):
        cpu_kernel()
    if numba_kernel.AVAILABLE:
        monkeypatch.setenv(KERNEL_ENV, "numba")
        assert type(cpu_quantizer(4, 0, 0)) is numba_kernel.Quantizer
        assert cpu_kernel(size=4) == "numba"  # the environment beats the length
        assert type(cpu_quantizer(4, 0, 0, kernel="numpy")) is Quantizer  # an argument beats the environment
    else:
        monkeypatch.setenv(KERNEL_ENV, "numba")
        with pytest.raises(ImportError, match="pip install numba"):
            cpu_kernel()
